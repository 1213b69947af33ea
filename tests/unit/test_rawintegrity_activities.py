"""The rawintegrity activities that touch only storage (put, tape status, removal of a bad copy,
the online removal's tape check) on real folders and a real SQLite location table, and the
metrics they record through OpenTelemetry (read back with an in-memory reader).

The Rucio calls (registration, the removal's replica check) are proven on the stack
(tests/stack/test_rawintegrity.py)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import SecretStr
from sqlmodel import Session
from temporalio.testing import ActivityEnvironment

from unembargo.activities.context import Resources
from unembargo.activities.rawintegrity import RawIntegrityActivities
from unembargo.adapters.tape import LocalTape
from unembargo.devstack import tape as migrator
from unembargo.models import rawintegrity as r
from unembargo.models.locations import DataLocation, LocationType, StorageType, upsert_location
from unembargo.models.settings import Settings

LFN = "LHCb/2026/RAW/run000123/run000123_0001.raw"
DATA = b"raw event data " * 100
ADLER = f"{zlib.adler32(DATA):08x}"


@pytest.fixture(scope="module")
def reader() -> InMemoryMetricReader:
    """This process's meter provider, read in memory (the activities' instruments bind to it)."""
    found = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[found]))
    return found


@pytest.fixture
def acts(tmp_path: Path) -> Iterator[tuple[RawIntegrityActivities, Path, Path]]:
    settings = Settings(
        state_dir=tmp_path / "state", database_url=SecretStr(f"sqlite:///{tmp_path / 'db.sqlite'}")
    )
    online, tape = tmp_path / "online", tmp_path / "tape"
    online.mkdir()
    tape.mkdir()
    resources = Resources(settings)
    with Session(resources.engine) as session:
        upsert_location(session, DataLocation(name="online", site="pit", type=LocationType.SOURCE,
                                              storage=StorageType.DISK, path=str(online)))  # fmt: skip
        upsert_location(session, DataLocation(name="tape", site="pit", type=LocationType.LONG_TERM_ARCHIVE,
                                              storage=StorageType.TAPE, path=str(tape)))  # fmt: skip
    (online / LFN).parent.mkdir(parents=True)
    (online / LFN).write_bytes(DATA)
    yield RawIntegrityActivities(resources, client=None), online, tape  # type: ignore[arg-type]


def sums(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Metric name -> its value (sums), or count (histograms), or per-attribute values (errors)."""
    found: dict[str, Any] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points = list(m.data.data_points)
                if m.name == "rawintegrity.errors":
                    found[m.name] = {p.attributes["stage"]: p.value for p in points}  # type: ignore[index,attr-defined]
                elif hasattr(points[0], "count"):
                    found[m.name] = sum(p.count for p in points)  # type: ignore[attr-defined]
                else:
                    found[m.name] = sum(p.value for p in points)  # type: ignore[attr-defined]
    return found


def test_put_migrate_verify_and_metrics(acts: tuple[RawIntegrityActivities, Path, Path], reader: Any) -> None:
    impl, online, tape_root = acts
    run = ActivityEnvironment().run
    before = sums(reader)
    put = run(impl.put_to_tape, r.PutInput(LFN, "online", "tape"))
    assert (put.size, put.adler32, put.copied) == (len(DATA), ADLER, True)
    # Check-first: the copy waiting in the cache is found, not written again.
    assert run(impl.put_to_tape, r.PutInput(LFN, "online", "tape")).copied is False
    assert run(impl.tape_status, r.TapeInput(LFN, "tape")).migrated is False
    tape = LocalTape(tape_root)
    migrator.migrate_once(tape, migrator.Migration(delay_s=0))
    status = run(impl.tape_status, r.TapeInput(LFN, "tape"))
    assert (status.migrated, status.adler32, status.size) == (True, ADLER, len(DATA))
    after = sums(reader)
    assert after["rawintegrity.waiting.files"] - before.get("rawintegrity.waiting.files", 0) == 1
    assert after["rawintegrity.waiting.bytes"] - before.get("rawintegrity.waiting.bytes", 0) == len(DATA)
    assert after["rawintegrity.migrated"] - before.get("rawintegrity.migrated", 0) == 1
    assert after["rawintegrity.migration.duration"] - before.get("rawintegrity.migration.duration", 0) == 1


def test_a_bad_copy_is_removed_only_while_it_is_bad(
    acts: tuple[RawIntegrityActivities, Path, Path], reader: Any
) -> None:
    impl, online, tape_root = acts
    run = ActivityEnvironment().run
    tape = LocalTape(tape_root)
    run(impl.put_to_tape, r.PutInput(LFN, "online", "tape"))
    migrator.migrate_once(tape, migrator.Migration(delay_s=0, corrupt=["*"]))
    bad = run(impl.tape_status, r.TapeInput(LFN, "tape"))
    assert bad.migrated and bad.adler32 != ADLER
    before = sums(reader).get("rawintegrity.bad_checksums", 0)
    # A removal naming another checksum (a good copy, say) leaves tape alone.
    assert run(impl.remove_tape_copy, r.RemoveTapeInput(LFN, "tape", ADLER)).removed is False
    assert run(impl.remove_tape_copy, r.RemoveTapeInput(LFN, "tape", bad.adler32 or "")).removed is True
    assert not tape.is_migrated(LFN) and (online / LFN).exists()
    assert sums(reader)["rawintegrity.bad_checksums"] - before == 1


def test_the_online_removal_refuses_without_a_verified_tape_copy(
    acts: tuple[RawIntegrityActivities, Path, Path], reader: Any
) -> None:
    impl, online, _ = acts
    before = sums(reader).get("rawintegrity.errors", {}).get("remove_online", 0)
    with pytest.raises(r.RemovalUnsafe, match="tape holds no tape copy"):
        ActivityEnvironment().run(
            impl.remove_online, r.RemoveOnlineInput(LFN, "online", "tape", len(DATA), ADLER, "TAPE")
        )
    assert (online / LFN).exists()
    assert sums(reader)["rawintegrity.errors"]["remove_online"] - before == 1


def test_a_missing_online_file_is_a_named_error(acts: tuple[RawIntegrityActivities, Path, Path]) -> None:
    impl, online, _ = acts
    (online / LFN).unlink()
    with pytest.raises(r.MissingOnline):
        ActivityEnvironment().run(impl.put_to_tape, r.PutInput(LFN, "online", "tape"))


def test_every_step_has_one_activity_at_a_known_operation() -> None:
    """The step table's derivations: each spec's activity exists, under its name, at an operation
    some location type serves."""
    from unembargo.activities.rawintegrity import rawintegrity_activities
    from unembargo.models.locations import Operation

    impl = RawIntegrityActivities.__new__(RawIntegrityActivities)
    by_op = rawintegrity_activities(impl)
    assert sum(len(fns) for fns in by_op.values()) == len(r.STEPS)
    for step, spec in r.STEPS.items():
        fn = getattr(RawIntegrityActivities, spec.activity)
        assert fn.__temporal_activity_definition.name == spec.activity, step
        assert Operation(spec.location) in Operation, step
        assert r.STEP_OF_ACTIVITY[spec.activity] == step


async def test_the_worker_serves_each_step_where_the_route_sends_it(env: Any, tmp_path: Path) -> None:
    """build_workers puts each activity on its operation's queue at the locations served, and
    route() sends each step to exactly such a queue."""
    from unembargo.client.rawintegrity import route
    from unembargo.workers import worker

    settings = Settings(
        state_dir=tmp_path / "state", database_url=SecretStr(f"sqlite:///{tmp_path / 'db.sqlite'}")
    )
    resources = Resources(settings)
    with Session(resources.engine) as session:
        site, disk, tape, cat = "pit", StorageType.DISK, StorageType.TAPE, StorageType.SERVICE
        for loc in (
            DataLocation(name="online", site=site, type=LocationType.SOURCE, storage=disk, path="/o"),
            DataLocation(
                name="tape", site=site, type=LocationType.LONG_TERM_ARCHIVE, storage=tape, path="/t"
            ),
            DataLocation(
                name="cat", site=site, type=LocationType.CATALOGUE, storage=cat, endpoint="http://rucio"
            ),
        ):
            upsert_location(session, loc)
        where = route(session, r.RawIntegritySettings(online_location="online", tape_location="tape"))
    built = worker.build_workers(env.client, settings, ["online", "tape", "cat"])
    served = {
        w.task_queue: {fn.__temporal_activity_definition.name for fn in w.config().get("activities", [])}
        for w in built
    }
    for step, spec in r.STEPS.items():
        assert spec.activity in served[where.queues[step.value]], step
    assert where.queues[r.Step.REMOVE_ONLINE.value] == "pit_online_deletion"
    assert where.queues[r.Step.PUT.value] == "pit_tape_archive_transfer"
    [flows] = [w.config().get("workflows", []) for w in built if w.task_queue == settings.workflow_task_queue]
    assert {f.__name__ for f in flows} >= {"RawFileWorkflow", "RegisterBatchWorkflow"}
