"""The carousel flow with Rucio's own conveyor moving the files: no hand staging.

Rucio's conveyor-submitter, -poller and -finisher run from the stack's Rucio venv (via
devstack/rucio_conveyor.py) with the stack's copying transfertool (devstack/rucio_copytool.py)
in place of FTS3: it copies each file from the tape RSE's path to the disk RSE's, checks its
adler32 against Rucio's, and answers DONE, or FAILED on a mismatch. The daemons run only for
this module, and the submitter only for RSEs with the attribute ``stack_conveyor``, which only
this module's RSEs have, so the other carousel tests' requests in the shared catalog stay queued
for their own hand staging (the poller polls only this tool's transfers; the finisher only
finds requests a submitter or poller moved on).
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from temporalio.client import Client
from test_carousel import Carousel, dataset_rules, messages, tape_dataset, wait_state

from support import WorkerProcess, carousel_location, stack_settings
from unembargo.adapters.stomp import Frame, StompConnection
from unembargo.client import carousel as api
from unembargo.devstack import procs, rucio_server
from unembargo.models.carousel import (
    DATASET_MESSAGE,
    FILE_MESSAGE,
    CarouselPolicy,
    CarouselRequest,
    CarouselState,
    Status,
    message_id,
    request_workflow_id,
)
from unembargo.models.settings import Settings

FILES = 20
# The RSE attribute (and expression) the conveyor's submitter is limited to.
SCOPE_ATTRIBUTE = "stack_conveyor"
LAUNCHER = Path(rucio_server.__file__).with_name("rucio_conveyor.py")
SLEEP_S = "1"
DAEMON_OPTIONS = {
    "submitter": ["--include-rses", f"{SCOPE_ATTRIBUTE}=True", "--sleep-time", SLEEP_S],
    "poller": ["--older-than", "0", "--sleep-time", SLEEP_S],
    "finisher": ["--sleep-time", SLEEP_S],
}
POLICY = CarouselPolicy(poll_first_s=0.3, poll_backoff=1.5, poll_max_s=1.0, heartbeat_s=10.0)
# The file protocol of the conveyor's RSEs: the submitter looks for third-party-copy rights.
DOMAINS = {
    **rucio_server.FILE_DOMAINS,
    "wan": {**rucio_server.FILE_DOMAINS["wan"], "third_party_copy_read": 1, "third_party_copy_write": 1},
}


def rucio_paths() -> rucio_server.RucioPaths:
    return rucio_server.RucioPaths.of(stack_settings())


def records_dir() -> Path:
    """Where the copying transfertool keeps what each job it was given did."""
    return rucio_paths().root / "stackcopy"


def copy_records(paths: set[str]) -> list[dict[str, Any]]:
    """The transfertool's records of transfers to these destination paths, oldest first."""
    found = []
    for job in records_dir().glob("*.json"):
        for request_id, outcome in json.loads(job.read_text()).items():
            if urlsplit(outcome["dest"]).path in paths:
                found.append({"request_id": request_id, **outcome})
    return sorted(found, key=lambda r: r["at"])


class Conveyor:
    """Rucio's conveyor daemons for this module, each a recorded process of the stack's Rucio."""

    def __init__(self, tag: str) -> None:
        self.paths = rucio_paths()
        self.names = [f"rucio-conveyor-{daemon}-{tag}" for daemon in DAEMON_OPTIONS]

    def start(self) -> None:
        python = str(self.paths.venv / "bin" / "python")
        for name, (daemon, options) in zip(self.names, DAEMON_OPTIONS.items(), strict=True):
            argv = [python, str(LAUNCHER), str(records_dir()), daemon, *options]
            env = rucio_server.server_env(self.paths)
            procs.start(self.paths.state_dir, name, argv, env=env, cwd=self.paths.root)

    def stop(self) -> None:
        # SIGTERM: each daemon stops its loop and removes its heartbeat, so a later run's
        # daemons are not handed a share of the work by a dead one's heartbeat.
        for name in self.names:
            procs.stop(self.paths.state_dir, name, timeout=30.0)

    def alive(self) -> bool:
        return all(procs.recorded(self.paths.state_dir, name) is not None for name in self.names)


def conveyor_rse(rucio: Any, rse: str, folder: Path, tape: bool, scoped: bool = True) -> None:
    """A file RSE at ``folder`` as ``rucio_server.ensure_rse`` makes them, open to the conveyor:
    its file protocol allows third-party copies, and (if ``scoped``) it has the conveyor's attribute."""
    rucio.add_rse(rse, deterministic=True, rse_type="TAPE" if tape else "DISK")
    if scoped:
        rucio.add_rse_attribute(rse, SCOPE_ATTRIBUTE, True)
    rucio_server.ensure_rse(rucio, rse, folder, DOMAINS)


@dataclass
class ConveyorCarousel(Carousel):
    # A disk RSE like the others but without the conveyor's attribute: outside its scope.
    outside: str = ""


@pytest.fixture(scope="module")
def carousel(
    module_settings: Settings, rucio: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConveyorCarousel]:
    """Two tape RSEs and a disk RSE for the conveyor (distances tape -> disk), a disk RSE
    outside its scope, a processing location, the embedded broker, a worker, and Rucio's
    conveyor daemons."""
    settings = module_settings
    tag = uuid.uuid4().hex[:6]
    root = tmp_path_factory.mktemp("conveyor")
    scope = settings.rucio_scope
    tape_rse, other_tape, disk_rse = f"VTAPE_{tag.upper()}", f"VTAPE2_{tag.upper()}", f"VDISK_{tag.upper()}"
    outside = f"VOUT_{tag.upper()}"
    for rse in (tape_rse, other_tape, disk_rse, outside):
        folder = root / rse / scope
        folder.mkdir(parents=True)
        conveyor_rse(rucio, rse, folder, tape=rse in (tape_rse, other_tape), scoped=rse != outside)
        rucio.set_local_account_limit(settings.rucio_account, rse, 10**12)
    for tape in (tape_rse, other_tape):
        for disk in (disk_rse, outside):
            rucio.add_distance(tape, disk, {"distance": 1})
    name = f"conveyor-{tag}"
    queues = carousel_location(settings, name, f"vsite-{tag}", f"v{tag}", root / disk_rse / scope)
    [port] = procs.free_ports(1)
    c = ConveyorCarousel(settings, rucio, scope, tape_rse, other_tape, disk_rse, queues,
                         f"/queue/conveyor-{tag}", port, name, root / "markers", outside=outside)  # fmt: skip
    conveyor = Conveyor(tag)
    c.start_broker()
    try:
        c.worker = WorkerProcess(settings, [name], env={"UNEMBARGO_CAROUSEL_BROKER_PORT": str(port)})
        conveyor.start()
        yield c
        assert conveyor.alive(), f"a conveyor daemon exited; see {rucio_paths().log_dir}"
    finally:
        conveyor.stop()
        c.stop_worker()
        c.stop_broker()


@pytest.fixture(scope="module")
async def client(module_settings: Settings) -> Client:
    s = module_settings
    return await Client.connect(s.temporal_address, namespace=s.temporal_namespace)


def file_bodies(frames: list[Frame]) -> list[dict[str, Any]]:
    return [json.loads(f.body) for f in frames if f.headers["type"] == FILE_MESSAGE]


def check_at_destination(c: Carousel, body: dict[str, Any], adler32: str) -> None:
    """The message's file is at the disk RSE's path of the file, with Rucio's adler32."""
    path = Path(body["path"])
    assert path == rucio_server.pfn_path(c.rucio, c.disk_rse, c.scope, body["name"])
    assert f"{zlib.adler32(path.read_bytes()):08x}" == adler32 == body["adler32"]
    assert not list(path.parent.glob(f".{path.name}.*")), "a temporary copy left beside the file"


async def test_conveyor_stages_a_dataset_one_message_per_file(
    carousel: ConveyorCarousel, client: Client
) -> None:
    """Twenty files on tape, the real request, and nothing but Rucio's conveyor with the copying
    transfertool moving them: one message per file, each file at its path with its adler32. A
    rule to an RSE outside the conveyor's scope is left alone all the while."""
    c = carousel
    dataset, sums = tape_dataset(c, FILES)
    first = min(sums)
    [aside] = c.rucio.add_replication_rule(
        [{"scope": c.scope, "name": first}], 1, c.outside, source_replica_expression=c.tape_rse
    )
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-main")
        req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, max_wait_s=3600.0)
        handle = await api.stage(client, c.settings, c.queues, req, c.policy("main"))
        received = messages(sub, FILES + 1, 60)
        assert sub.receive(1.0) is None  # nothing more, nothing twice
    bodies = file_bodies(received)
    assert sorted(b["name"] for b in bodies) == sorted(sums)
    rid = request_workflow_id(c.scope, dataset)
    ids = [f.headers["msg_id"] for f in received if f.headers["type"] == FILE_MESSAGE]
    assert ids == [message_id(rid, c.scope, b["name"]) for b in bodies]
    for b in bodies:
        assert b["status"] == "Available" and b["rse"] == c.disk_rse
        check_at_destination(c, b, sums[b["name"]])
    [done] = [json.loads(f.body) for f in received if f.headers["type"] == DATASET_MESSAGE]
    assert done["status"] == Status.FINISHED and done["files"] == FILES and done["not_staged"] == []
    final: CarouselState = await handle.result()
    assert final.transform_status == Status.FINISHED and sorted(final.announced) == sorted(sums)
    counters = (final.in_total_files, final.in_processed_files, final.out_total_files)
    assert counters == (FILES, FILES, FILES) and final.output_processed_files == FILES
    [rule_id] = final.rule_ids
    assert c.rucio.get_replication_rule(rule_id)["state"] == "OK"
    assert [r["id"] for r in dataset_rules(c, dataset)] == [rule_id]
    # The transfertool copied each file once, from the tape, and said DONE.
    records = copy_records({b["path"] for b in bodies})
    assert sorted(urlsplit(r["dest"]).path for r in records) == sorted(b["path"] for b in bodies)
    assert {r["state"] for r in records} == {"DONE"}
    assert all(f"/{c.tape_rse}/" in r["source"] for r in records)
    # The conveyor staged twenty files meanwhile and never took up the request outside its scope.
    assert c.rucio.list_request_by_did(first, c.outside, c.scope)["state"] == "QUEUED"
    assert [lock["state"] for lock in c.rucio.list_replica_locks(aside)] == ["REPLICATING"]
    assert not rucio_server.pfn_path(c.rucio, c.outside, c.scope, first).exists()


async def test_corrupted_on_tape_failed_then_reruled_from_the_other_tape(
    carousel: ConveyorCarousel, client: Client
) -> None:
    """A file whose copy on the first tape does not match Rucio's adler32: the transfertool fails
    each transfer from it (Rucio retries, then its lock is STUCK), the corrupted bytes never
    reach the destination and are never announced; the flow re-rules the file from the other
    tape, the conveyor copies the good copy, and it is announced once."""
    c = carousel
    dataset, sums = tape_dataset(c, 3)
    bad, *good = sorted(sums)
    corrupted = rucio_server.pfn_path(c.rucio, c.tape_rse, c.scope, bad)
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    dest = rucio_server.pfn_path(c.rucio, c.disk_rse, c.scope, bad)
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, max_wait_s=3600.0)
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-corrupt")
        handle = await api.stage(client, c.settings, c.queues, req, c.policy("corrupt"))
        got = messages(sub, 2, 60)
        assert sorted(b["name"] for b in file_bodies(got)) == good
        s = await wait_state(client, c, dataset, lambda s: len(s.sources) == 2, "a re-rule of the STUCK lock")
        assert s.sources == [c.tape_rse, c.other_tape] and bad not in s.announced
        assert [(x.files, x.source, x.reason) for x in s.stuck] == [([bad], c.tape_rse, "STUCK lock")]
        got += messages(sub, 2, 60)
        assert sub.receive(1.0) is None
    bodies = file_bodies(got)
    assert [b["name"] for b in bodies][-1] == bad and sorted(b["name"] for b in bodies) == sorted(sums)
    for b in bodies:
        check_at_destination(c, b, sums[b["name"]])
    # Rucio's finisher requeued the failed transfer three times (its fixed retry count) and made
    # the lock STUCK at the fourth failure; the transfer of the re-rule, from the other tape, was
    # the file's first DONE.
    records = copy_records({str(dest)})
    assert [r["state"] for r in records] == ["FAILED"] * 4 + ["DONE"], records
    for r in records[:4]:
        assert f"/{c.tape_rse}/" in r["source"] and r["reason"].startswith("adler32 mismatch"), r
    assert f"/{c.other_tape}/" in records[-1]["source"]
    final: CarouselState = await handle.result()
    assert final.transform_status == Status.FINISHED and final.output_processed_files == 3
