"""The rawintegrity flow end to end on the real stack: a run's raw files written to the online
location go to the tape location, migrate (the stack's tape service, a second's delay), are
registered in the real Rucio at a tape RSE in batches, and only then leave the online storage.
A corrupted tape copy and a file that never migrates end waiting for an operator, online kept.
The worker is SIGKILLed once, just before it removes an online copy, and replaced; a second run,
on locations of its own, has workers SIGKILLed once at every crash point of the flow.

What only the unit layer proves (tests/unit/test_rawintegrity_workflow.py, time-skipping server):
Rucio down, the online system refusing the removal, a replica lost between registration and
removal, duplicate requests, an operator's retry and give_up, a failure around the steps that
have no crash point. Here the real removal activity's own refusal is proven once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment

from support import WorkerProcess, effects, poll_until
from unembargo.activities.context import Resources
from unembargo.activities.rawintegrity import RawIntegrityActivities
from unembargo.adapters.tape import LocalTape
from unembargo.client import rawintegrity as ri
from unembargo.devstack import procs
from unembargo.devstack import tape as migrator
from unembargo.models import rawintegrity as r
from unembargo.models.locations import DataLocation, LocationType, StorageType, get_location, upsert_location
from unembargo.models.settings import Settings
from unembargo.models.tables import Effect, connect
from unembargo.workflows.rawintegrity import RawFileWorkflow

FILES = 100
SIZE = 2048
# Fast enough for a test: checks after 0.5 s growing to 2 s; a file not on tape in 15 s is
# reported; two bad copies (not three) before an operator is asked; a killed activity is
# noticed after 5 s without a heartbeat.
POLICY = r.RawPolicy(
    max_transfers=2, migration_first_s=0.5, migration_backoff=1.5, migration_max_interval_s=2.0,
    migration_limit_s=15.0, register_reply_s=30.0, heartbeat_s=5.0,
)  # fmt: skip


@dataclass
class Raw:
    settings: Settings
    config: r.RawIntegritySettings
    online: Path
    tape: Path
    run: str
    worker: WorkerProcess
    locations: list[str]
    env: dict[str, str]
    markers: Path

    async def replace_killed_worker(self) -> None:
        """Once the worker is SIGKILLed at its crash point, start a healthy one."""
        await poll_until(lambda: not self.worker.alive(), 60, "the worker to be killed before a removal")
        assert (self.markers / "remove_online-acting").exists(), self.worker.output()[-3000:]
        self.worker = WorkerProcess(self.settings, self.locations, env=self.env)


def flow_locations(
    settings: Settings, rucio: object, root: Path, tag: str
) -> tuple[r.RawIntegritySettings, subprocess.Popen[bytes]]:
    """Locations (online disk, tape, catalogue) of their own under ``root``, a tape RSE, and the
    tape service migrating after 1 s (never-migrating and corrupting patterns)."""
    online, tape = root / "online", root / "tape"
    online.mkdir()
    tape.mkdir()
    config = r.RawIntegritySettings(
        online_location=f"raw-online-{tag}", tape_location=f"raw-tape-{tag}",
        catalogue_location=f"raw-cat-{tag}", rse=f"TAPE_{tag.upper()}",
    )  # fmt: skip
    with Session(connect(settings.database_url.get_secret_value())) as session:
        site = f"rawsite-{tag}"
        for loc in (
            DataLocation(name=config.online_location, site=site, type=LocationType.SOURCE,
                         storage=StorageType.DISK, path=str(online)),
            DataLocation(name=config.tape_location, site=site, type=LocationType.LONG_TERM_ARCHIVE,
                         storage=StorageType.TAPE, path=str(tape)),
            DataLocation(name=config.catalogue_location or "", site=site, type=LocationType.CATALOGUE,
                         storage=StorageType.SERVICE, endpoint=settings.rucio_host),
        ):  # fmt: skip
            upsert_location(session, loc, short_name=f"r{tag}")
    rucio.add_rse(config.rse, deterministic=True, rse_type="TAPE")  # type: ignore[attr-defined]
    migrator.write_config(tape, migrator.Migration(delay_s=1.0, never=["*/never_*"], corrupt=["*/bad_*"]))
    service = subprocess.Popen(
        [sys.executable, "-m", "unembargo.devstack.tape", str(tape)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    return config, service


def served(config: r.RawIntegritySettings) -> list[str]:
    return [config.online_location, config.tape_location, config.catalogue_location or ""]


@pytest.fixture(scope="module")
def raw(module_settings: Settings, rucio: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Raw]:
    """The flow's locations of the module's own and a worker serving them."""
    settings = module_settings
    tag = uuid.uuid4().hex[:6]
    root = tmp_path_factory.mktemp("rawintegrity")
    config, service = flow_locations(settings, rucio, root, tag)
    env = {f"UNEMBARGO_RAWINTEGRITY_{k.upper()}": str(v) for k, v in config.model_dump().items() if v}
    os.environ.update(env)
    locations = served(config)
    # The first worker is SIGKILLed once, just before it would remove an online copy (after its
    # checks); the test starts another, which must finish that file without removing twice.
    markers = root / "crash-markers"
    markers.mkdir()
    crash = {"UNEMBARGO_CRASH_AT": "remove_online:acting", "UNEMBARGO_CRASH_MARKERS": str(markers)}
    raw = Raw(settings, config, root / "online", root / "tape", f"LHCb/2026/RAW/run{tag}",
              WorkerProcess(settings, locations, env={**env, **crash}), locations, env, markers)  # fmt: skip
    try:
        yield raw
    finally:
        raw.worker.stop()
        service.terminate()
        service.wait(10)
        for key in env:
            os.environ.pop(key, None)


def write_run(raw: Raw) -> dict[str, tuple[int, str]]:
    """FILES small raw files of one run, plus a corrupting and a never-migrating one."""
    written = {}
    names = [f"{raw.run}/run_{i:04d}.raw" for i in range(FILES)] + [
        f"{raw.run}/bad_0001.raw",
        f"{raw.run}/never_0001.raw",
    ]
    for i, lfn in enumerate(names):
        data = os.urandom(SIZE - i % 7)
        path = raw.online / lfn
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written[lfn] = (len(data), f"{zlib.adler32(data):08x}")
    return written


async def test_a_run_goes_to_tape_and_leaves_online_only_when_verified(raw: Raw, rucio: object) -> None:
    """Every good file ends Done: registered in Rucio at the tape RSE with its size and adler32, on
    tape with that checksum, gone from online; each registered and removed exactly once. The bad
    copy and the never-migrating file wait for an operator with their evidence, online kept."""
    settings = raw.settings
    written = write_run(raw)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        lfns = ri.online_lfns(session, raw.config, raw.run)
        where = ri.route(session, raw.config)
    assert sorted(lfns) == sorted(written)
    assert await ri.put(client, settings, where, lfns, POLICY) == Counter(started=FILES + 2)
    good = [lfn for lfn in lfns if "/run_" in lfn]
    bad, never = f"{raw.run}/bad_0001.raw", f"{raw.run}/never_0001.raw"
    await raw.replace_killed_worker()

    for lfn in good:
        handle = client.get_workflow_handle(r.file_workflow_id(lfn), result_type=r.RawFileState)
        got = await handle.result(rpc_timeout=timedelta(seconds=60))
        assert got.state == r.State.DONE, got

    async def operators() -> bool:
        found = await ri.status(client, raw.run)
        return len(found.operator) == 2

    await poll_until(operators, 60, "the bad and the never-migrating file to wait for an operator")

    tape = LocalTape(raw.tape)
    replicas = {
        e["name"]: e
        for e in rucio.list_replicas(  # type: ignore[attr-defined]
            [{"scope": settings.rucio_scope, "name": n} for n in lfns], all_states=True
        )
    }
    for lfn in good:
        size, adler = written[lfn]
        entry = replicas[lfn]
        assert (entry["bytes"], entry["adler32"]) == (size, adler), lfn
        assert entry["states"] == {raw.config.rse: "AVAILABLE"}, lfn
        copy = tape.tape_checksum(lfn)
        assert copy is not None and (copy.size, copy.adler32) == (size, adler), lfn
        assert not (raw.online / lfn).exists(), lfn
    ledger = effects(settings, set(good))
    assert {(lfn, "register", "add_replica") for lfn in good} <= set(ledger)
    assert all(n == 1 for (_, step, _), n in ledger.items() if step in ("register", "remove_online"))

    # The bad file: each of its two tape copies was bad and removed; the never-migrating one sits
    # in the cache. Both are still online and in no catalogue.
    for lfn, reason in ((bad, "TapeChecksumMismatch"), (never, "NeverMigrated")):
        state = await client.get_workflow_handle(r.file_workflow_id(lfn)).query(RawFileWorkflow.state)
        assert state.step == r.WAITING_OPERATOR and state.operator and state.operator.startswith(reason), (
            state
        )
        assert (raw.online / lfn).exists() and lfn not in replicas
    bad_state = await client.get_workflow_handle(r.file_workflow_id(bad)).query(RawFileWorkflow.state)
    assert len(bad_state.mismatches) == 2 and not tape.is_migrated(bad)
    assert tape.in_cache(never) == written[never]

    found = await ri.status(client, raw.run)
    assert found.by_state.get(r.State.DONE) == FILES and found.waiting_files == 2
    assert found.waiting_bytes == written[bad][0] + written[never][0]
    assert found.done_last_hour == FILES

    # A second put of the run starts nothing new: Done files are not put again.
    again = await ri.put(client, settings, where, lfns, POLICY)
    assert again == Counter(done=FILES, started=2)

    # The real removal refuses, at the moment of removing, a file tape does not hold verified.
    acts = RawIntegrityActivities(Resources(settings), client)
    inp = r.RemoveOnlineInput(
        never, raw.config.online_location, raw.config.tape_location, *written[never], raw.config.rse
    )
    with pytest.raises(r.RemovalUnsafe, match="no tape copy"):
        ActivityEnvironment().run(acts.remove_online, inp)
    assert (raw.online / never).exists()

    # The commands an operator runs: status as JSON, then give up on the never-migrating file.
    shown = json.loads(cli(settings, "status", "--run", raw.run, "--json"))
    assert shown["by_state"]["Done"] == FILES and {w["lfn"] for w in shown["operator"]} == {bad, never}
    cli(settings, "decide", never, r.GIVE_UP)
    # Reconcile reads online, tape and Rucio themselves: nothing of the run is lost.
    classes = json.loads(cli(settings, "reconcile", "--run", raw.run, "--json"))
    assert classes == {r.DONE_CLASS: sorted(good), r.WAITING: sorted([bad, never])}
    await poll_until(lambda: _failed(client, raw.run), 30, "the given-up file to be Failed")
    assert (raw.online / never).exists()


def cli(settings: Settings, *args: str) -> str:
    """``unembargo rawintegrity ARGS`` in a child process with these settings; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", "rawintegrity", *args],
        env={**os.environ, **settings.environment()}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _failed(client: Client, run: str) -> bool:
    return (await ri.status(client, run)).by_state.get(r.State.FAILED) == 1


def test_the_dev_stack_tape_service(
    module_settings: Settings, rucio: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`unembargo dev up`'s tape service: the flow's locations and tape RSE exist, it migrates,
    it stops."""
    tag = uuid.uuid4().hex[:6]
    for key, value in (("ONLINE_LOCATION", f"dev-online-{tag}"), ("TAPE_LOCATION", f"dev-tape-{tag}"),
                       ("RSE", f"DEVTAPE_{tag.upper()}")):  # fmt: skip
        monkeypatch.setenv(f"UNEMBARGO_RAWINTEGRITY_{key}", value)
    settings = module_settings.model_copy(update={"state_dir": tmp_path / "state"})
    assert migrator.ensure(settings) == "started"
    try:
        assert migrator.health(settings)[0] and migrator.ensure(settings) == "already up"
        root = migrator.root_of(settings)
        migrator.write_config(root, migrator.Migration(delay_s=0))
        with Session(connect(settings.database_url.get_secret_value())) as session:
            assert get_location(session, f"dev-tape-{tag}").path == str(root)
        assert rucio.get_rse(f"DEVTAPE_{tag.upper()}")["rse_type"] == "TAPE"  # type: ignore[attr-defined]
        source = tmp_path / "x.raw"
        source.write_bytes(b"abc")
        LocalTape(root).put("run1/x.raw", source)
        procs.poll(lambda: LocalTape(root).is_migrated("run1/x.raw"), 20, "the tape service to migrate")
    finally:
        assert migrator.stop(settings)
    assert not migrator.health(settings)[0]


# Every crash point of the flow's side-effecting activities: before acting and after acting.
CRASH_POINTS = [
    f"{activity}:{point}"
    for activity in ("put_to_tape", "register_tape_replicas", "remove_online")
    for point in ("acting", "acted")
]
# Armed workers at once: the survivor of a kill takes over while the killed one is replaced.
ARMED = 2


async def test_a_worker_killed_at_every_crash_point_removes_nothing_unverified(
    module_settings: Settings, rucio: object, tmp_path: Path
) -> None:
    """Workers SIGKILL themselves once at each crash point (put, registration, removal; before and
    after acting), a survivor takes over after the 5 s heartbeat timeout: every file ends Done,
    registered once with its adler32, on tape, gone online; each side effect is done once, and
    no online copy was removed before its registration."""
    settings = module_settings
    tag = uuid.uuid4().hex[:6]
    config, service = flow_locations(settings, rucio, tmp_path, tag)
    run = f"LHCb/2026/RAW/crash{tag}"
    written = {}
    for i in range(4):
        data = os.urandom(SIZE + i)
        lfn = f"{run}/run_{i:04d}.raw"
        (tmp_path / "online" / lfn).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "online" / lfn).write_bytes(data)
        written[lfn] = (len(data), f"{zlib.adler32(data):08x}")
    markers = tmp_path / "crash-markers"
    markers.mkdir()
    env = {"UNEMBARGO_CRASH_AT": ",".join(CRASH_POINTS), "UNEMBARGO_CRASH_MARKERS": str(markers)}
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    workers = [WorkerProcess(settings, served(config), env) for _ in range(ARMED)]
    kills = 0
    try:
        with Session(connect(settings.database_url.get_secret_value())) as session:
            where = ri.route(session, config)
        assert await ri.put(client, settings, where, sorted(written), POLICY) == Counter(started=len(written))
        handles = [
            client.get_workflow_handle(r.file_workflow_id(lfn), result_type=r.RawFileState) for lfn in written
        ]

        async def closed() -> bool:
            return all([(await h.describe()).status != WorkflowExecutionStatus.RUNNING for h in handles])

        async def killed_or_closed() -> bool:
            return any(not w.alive() for w in workers) or await closed()

        while not await closed():
            for dead in [w for w in workers if not w.alive()]:
                workers.remove(dead)
                assert dead.proc.returncode == -signal.SIGKILL, dead.output()[-3000:]
                kills += 1
            assert kills <= len(CRASH_POINTS)
            workers += [WorkerProcess(settings, served(config), env) for _ in range(ARMED - len(workers))]
            await poll_until(killed_or_closed, 120, "a kill or the end of the file workflows")
    finally:
        for worker in workers:
            worker.stop()
        service.terminate()
        service.wait(10)
    kills += sum(1 for w in workers if w.proc.returncode == -signal.SIGKILL)

    assert sorted(p.name for p in markers.iterdir()) == sorted(p.replace(":", "-") for p in CRASH_POINTS)
    assert kills == len(CRASH_POINTS)
    for handle in handles:
        got = await handle.result()
        assert got.state == r.State.DONE, got
    replicas = {
        e["name"]: e
        for e in rucio.list_replicas(  # type: ignore[attr-defined]
            [{"scope": settings.rucio_scope, "name": n} for n in written], all_states=True
        )
    }
    tape = LocalTape(tmp_path / "tape")
    for lfn, (size, adler) in written.items():
        entry = replicas[lfn]
        assert (entry["bytes"], entry["adler32"]) == (size, adler), lfn
        assert entry["states"] == {config.rse: "AVAILABLE"}, lfn
        copy = tape.tape_checksum(lfn)
        assert copy is not None and (copy.size, copy.adler32) == (size, adler), lfn
        assert not (tmp_path / "online" / lfn).exists(), lfn
    # The ledger, in the order the side effects were begun: each file copied, then registered
    # once, then removed once. (A kill that lands while another thread copies a file makes that
    # copy run again: the same bytes to the same cache path, so the state above is the proof.)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        rows = session.exec(select(Effect).where(Effect.obs_id.in_(list(written))).order_by(Effect.id)).all()
    for lfn in written:
        order = [(row.step, row.action) for row in rows if row.obs_id == lfn]
        copies = order.count(("put", "copy"))
        assert copies >= 1 and order[copies:] == [("register", "add_replica"), ("remove_online", "remove")], (
            lfn,
            order,
        )
