"""The bad-input catalogue (docs/bad-input.md), run through the real workflow on the real stack.

Every case is one exposure on a day of its own (the dataset-conflict case shares its
day with a sibling that must complete). All of them are seeded, spoilt as the case
says, then started together in one batch, as ``unembargo start`` would: one bad
exposure must never hold up another. Each ends with its named error or with the
exposure unembargoed, and none loses or overwrites anything: the bucket listing,
files already at the destination (bytes and mtime), the main butler and Rucio are
compared with what they held before the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from lsst.daf.butler import Butler, DatasetIdGenEnum, DatasetRef, FileDataset
from rucio.common.exception import DataIdentifierNotFound
from sqlmodel import Session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError

from support import WorkerProcess, effects, plant_foreign_zip
from unembargo.devstack import lsstcam
from unembargo.devstack.butler_repos import RAW, RAW_RUN
from unembargo.devstack.formatter import SyntheticRawFormatter
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.engine.starter import StartOutcome, start_exposures
from unembargo.models import names
from unembargo.models.exposure import STEPS, Exposure, Policy, Step
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, step_queues
from verify import check_unembargoed, check_zip

if TYPE_CHECKING:
    from rucio.client import Client as RucioClient

# Three raws (two science, one guider) and an expectedSensors file listing exactly
# them: a complete exposure that is quick to seed and zip.
FEW = (0, 1, 190)
FILE_SIZE = 8 * 1024
# Short timers, so the waiting cases give up within a minute; the wait is long enough
# that a first zip attempt slowed by the rest of the batch (whose later steps go ahead of
# zips on the queue: STEP_PRIORITY) still leaves time to wait.
POLICY = Policy(heartbeat_s=10, incomplete_wait_s=60, incomplete_poll_s=2)
# Guards the whole batch against a hang; the cases themselves take well under a minute.
BATCH_TIMEOUT_S = 300
# The cases' days: before any day fresh_day() gives (2000-2019), so another module's
# ``start --day`` in the same session never selects these exposures.
FIRST_DAY = date(1990, 1, 1)
DONE = "completed"
# What the foreign replica in Rucio holds, checked before and after.
FOREIGN_ADLER32 = "0badc0de"
# Names of odd objects that are zipped as they are.
ODD_KEYS = {"notes from the night.txt": b"seeing 0.7", "résumé-Ωmega.json": b"{}", "sub dir/ü.json": b"[]"}
DOTS_IN_NAME = "v1..2 notes..txt"
LONG_COMPONENT = "n" * 300 + ".txt"
# Four 250-byte folders: the key is over 1024 bytes (more than S3 itself allows).
LONG_KEY = "/".join(["d" * 250] * 4) + "/f.txt"
ESCAPE = "sub/../../escape.json"
# A second unsafe key in the same folder: both are named in the one error.
DOT_COMPONENT = "notes/./night.json"


@dataclass
class Lab:
    """The session's systems, as the cases spoil them and the checks read them."""

    settings: Settings
    s3: Any
    rucio: RucioClient
    scratch: Path

    def put(self, seeded: SeededExposure, name: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.settings.s3_bucket, Key=seeded.prefix + name, Body=body)

    def get(self, seeded: SeededExposure, name: str) -> bytes:
        return self.s3.get_object(Bucket=self.settings.s3_bucket, Key=seeded.prefix + name)["Body"].read()

    def delete(self, seeded: SeededExposure, name: str) -> None:
        self.s3.delete_object(Bucket=self.settings.s3_bucket, Key=seeded.prefix + name)

    def path(self, seeded: SeededExposure, suffix: str = names.ZIP_SUFFIX) -> Path:
        day = names.day_relpath(lsstcam.INSTRUMENT, seeded.day_obs)
        return self.settings.dest_root / day / f"{seeded.obs_id}{suffix}"


def raw_name(seeded: SeededExposure, detector: int, ext: str = ".fits") -> str:
    return f"{seeded.obs_id}_{lsstcam.DETECTORS[detector].full_name}{ext}"


# ---------------------------------------------------------------- spoiling a seeded exposure


def truncate_in_bucket(lab: Lab, seeded: SeededExposure) -> None:
    """The FITS object was replaced by a shorter one after the butler recorded it."""
    name = raw_name(seeded, 1)
    lab.put(seeded, name, lab.get(seeded, name)[:4096])


def empty_sidecar(lab: Lab, seeded: SeededExposure) -> None:
    lab.put(seeded, raw_name(seeded, 1, ".json"), b"")


def delete_sidecar(lab: Lab, seeded: SeededExposure) -> None:
    lab.delete(seeded, raw_name(seeded, 1, ".json"))


def delete_raw(lab: Lab, seeded: SeededExposure) -> None:
    """The butler has a raw whose object is not in the bucket."""
    lab.delete(seeded, raw_name(seeded, 1))


def delete_expected_sensors(lab: Lab, seeded: SeededExposure) -> None:
    lab.delete(seeded, names.expected_sensors_name(seeded.obs_id))


def expected_sensors_not_json(lab: Lab, seeded: SeededExposure) -> None:
    lab.put(seeded, names.expected_sensors_name(seeded.obs_id), b"[not json")


def expected_sensors_without_list(lab: Lab, seeded: SeededExposure) -> None:
    lab.put(seeded, names.expected_sensors_name(seeded.obs_id), b'{"obsid": "x", "expectedSensors": 205}')


def plant_zip(lab: Lab, seeded: SeededExposure) -> None:
    plant_foreign_zip(lab.path(seeded))


def plant_stale_staging(lab: Lab, seeded: SeededExposure) -> None:
    """Staging files of a crashed earlier attempt, beside both final names."""
    for suffix in (names.ZIP_SUFFIX, names.YAML_SUFFIX):
        final = lab.path(seeded, suffix)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.with_name(f".{final.name}.deadbeef0000.partial").write_bytes(b"left by a crashed attempt")


def plant_folder_marker(lab: Lab, seeded: SeededExposure) -> None:
    """A zero-byte object whose key is the exposure folder itself, as S3 consoles make."""
    lab.s3.put_object(Bucket=lab.settings.s3_bucket, Key=seeded.prefix, Body=b"")


def plant_record_under_other_obs_id(lab: Lab, seeded: SeededExposure) -> None:
    """The main butler holds the exposure's id with another obs_id."""
    with (
        Butler.from_config(lab.settings.embargo_butler) as embargo,
        Butler.from_config(lab.settings.main_butler, writeable=True) as main,
    ):
        main.transfer_dimension_records_from(embargo, [_embargo_raw(embargo, seeded, 0)])
        [record] = main.query_dimension_records(
            "exposure", instrument=lsstcam.INSTRUMENT, exposure=seeded.exposure_id, explain=False
        )
        changed = {**record.toDict(), "obs_id": f"{seeded.obs_id}_other"}
        main.registry.syncDimensionData("exposure", changed, update=True)


def plant_foreign_replica(lab: Lab, seeded: SeededExposure) -> None:
    """Rucio already has the zip's name, with other bytes and checksum."""
    name = names.zip_relpath(lsstcam.INSTRUMENT, seeded.day_obs, seeded.obs_id)
    spec = {"scope": lab.settings.rucio_scope, "name": name, "bytes": 1234, "adler32": FOREIGN_ADLER32}
    lab.rucio.add_replicas(lab.settings.rucio_rse, [spec])


def _embargo_raw(embargo: Butler, seeded: SeededExposure, detector: int) -> DatasetRef:
    [ref] = embargo.query_datasets(
        RAW,
        collections="*",
        find_first=False,
        instrument=lsstcam.INSTRUMENT,
        exposure=seeded.exposure_id,
        detector=detector,
        with_dimension_records=True,
        explain=False,
    )
    return ref


def plant_foreign_dataset(lab: Lab, seeded: SeededExposure) -> None:
    """The main butler got detector 0's data ID from elsewhere, under a dataset id of its own."""
    with (
        Butler.from_config(lab.settings.embargo_butler) as embargo,
        Butler.from_config(lab.settings.main_butler, writeable=True) as main,
    ):
        ref = _embargo_raw(embargo, seeded, 0)
        main.transfer_dimension_records_from(embargo, [ref])
        main.registry.registerDatasetType(ref.datasetType)
        main.collections.register(RAW_RUN)
        other = DatasetRef(ref.datasetType, ref.dataId, RAW_RUN, id_generation_mode=DatasetIdGenEnum.UNIQUE)
        path = lab.scratch / f"{other.id}.fits"
        path.write_bytes(b"SIMPLE")
        main.ingest(
            FileDataset(path=str(path), refs=[other], formatter=SyntheticRawFormatter), transfer="copy"
        )


def plant_other_exposure_record(lab: Lab, seeded: SeededExposure) -> None:
    """The main butler holds the exposure's record with another observation_reason."""
    with (
        Butler.from_config(lab.settings.embargo_butler) as embargo,
        Butler.from_config(lab.settings.main_butler, writeable=True) as main,
    ):
        main.transfer_dimension_records_from(embargo, [_embargo_raw(embargo, seeded, 0)])
        [record] = main.query_dimension_records(
            "exposure", instrument=lsstcam.INSTRUMENT, exposure=seeded.exposure_id, explain=False
        )
        changed = {**record.toDict(), "observation_reason": "engineering"}
        main.registry.syncDimensionData("exposure", changed, update=True)


# ---------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    """One row of the catalogue: an input, and the outcome it must have."""

    name: str
    # DONE, or the named error the workflow must fail with...
    outcome: str
    # ...at this step; its message must hold each of ``says`` ({obs_id} is filled in).
    step: str | None = None
    says: tuple[str, ...] = ()
    seed: Mapping[str, Any] = field(default_factory=dict)
    spoil: Callable[[Lab, SeededExposure], None] | None = None
    # Cases with the same day share a day_obs.
    day: str | None = None


CASES = [
    Case("truncated-fits", "SourceMismatch", "zip", ("{obs_id}_R01_S01.fits", "truncated or corrupt"),
         seed={"cut_raws": {1: 5000}}),
    Case("fits-shortened-after-ingest", "SourceMismatch", "zip",
         ("{obs_id}_R01_S01.fits is 4096 bytes in the bucket",), spoil=truncate_in_bucket),
    Case("zero-byte-raw", "SourceMismatch", "zip", ("{obs_id}_R01_S01.fits is empty",),
         seed={"cut_raws": {1: 0}}),
    Case("zero-byte-sidecar-and-object", DONE, seed={"extra_objects": {"empty marker.txt": b""}},
         spoil=empty_sidecar),
    Case("sidecar-missing", DONE, spoil=delete_sidecar),
    Case("expected-sensors-missing", "IncompleteExposure", "zip",
         ("gave up after waiting", "{obs_id}_expectedSensors.json"), spoil=delete_expected_sensors),
    Case("fewer-raws-than-expected", "IncompleteExposure", "zip",
         ("gave up after waiting", "found 3 of 4", "R01_S02"), seed={"expected": (*FEW, 2)}),
    Case("expected-sensors-not-json", "SourceMismatch", "zip", ("not an expectedSensors file",),
         spoil=expected_sensors_not_json),
    Case("expected-sensors-without-list", "SourceMismatch", "zip", ("not an expectedSensors file",),
         spoil=expected_sensors_without_list),
    Case("started-twice-and-listed-twice", DONE),
    Case("keys-with-spaces-and-unicode", DONE, seed={"extra_objects": ODD_KEYS}),
    Case("dotdot-component", "UnsafeKey", "zip",
         ("2 object keys", ESCAPE, DOT_COMPONENT, "'..' path component"),
         seed={"extra_objects": {ESCAPE: b"{}", DOT_COMPONENT: b"{}"}}),
    Case("folder-marker-object", DONE, spoil=plant_folder_marker),
    Case("dots-inside-a-name", DONE, seed={"extra_objects": {DOTS_IN_NAME: b"ok"}}),
    Case("component-over-255-bytes", DONE, seed={"extra_objects": {LONG_COMPONENT: b"long"}}),
    Case("key-over-1024-bytes", DONE, seed={"extra_objects": {LONG_KEY: b"longer"}}),
    Case("rucio-replica-other-checksums", "ReplicaConflict", "register", (f"adler32={FOREIGN_ADLER32}",),
         spoil=plant_foreign_replica),
    Case("destination-zip-other-content", "DestinationConflict", "zip", ("{obs_id}.zip exists",),
         spoil=plant_zip),
    Case("raw-not-in-bucket", "SourceMismatch", "zip", ("{obs_id}_R01_S01.fits, which is not an object",),
         spoil=delete_raw),
    Case("stale-staging-files", DONE, spoil=plant_stale_staging),
    Case("main-holds-data-id-under-other-id", "DatasetConflict", "ingest", ("under other dataset ids",),
         spoil=plant_foreign_dataset, day="shared"),
    Case("sibling-of-the-dataset-conflict", DONE, day="shared"),
    Case("main-exposure-record-differs", "DimensionRecordConflict", "ingest",
         ("observation_reason (main 'engineering', embargo 'field_survey_science')",),
         spoil=plant_other_exposure_record),
    Case("main-exposure-id-under-other-obs-id", "DimensionRecordConflict", "ingest",
         ("as obs_id '{obs_id}_other', not '{obs_id}'",), spoil=plant_record_under_other_obs_id),
]  # fmt: skip
BY_NAME = {case.name: case for case in CASES}
DUPLICATE = "started-twice-and-listed-twice"


# ---------------------------------------------------------------- what must be kept


def bucket_listing(lab: Lab, seeded: SeededExposure) -> dict[str, str]:
    """Key -> ETag of every object of the exposure's folder."""
    pages = lab.s3.get_paginator("list_objects_v2").paginate(
        Bucket=lab.settings.s3_bucket, Prefix=seeded.prefix
    )
    return {obj["Key"]: obj["ETag"] for page in pages for obj in page.get("Contents", [])}


def dest_files(lab: Lab, seeded: SeededExposure) -> dict[str, tuple[str, int, int]]:
    """Name -> (sha256, mtime_ns, inode) of the exposure's files at the destination, staging too."""
    folder = lab.path(seeded).parent
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        if path.name.startswith((seeded.obs_id, f".{seeded.obs_id}")):
            stat = path.stat()
            found[path.name] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_ino)
    return found


def main_state(main: Butler, seeded: SeededExposure) -> tuple[set[str], dict[str, Any] | None, int]:
    """The main butler's dataset ids, exposure record and visit records for the exposure."""
    ids = set()
    for dataset_type in main.registry.queryDatasetTypes([RAW, "guider_raw"]):
        refs = main.query_datasets(
            dataset_type, collections="*", find_first=False, explain=False,
            instrument=lsstcam.INSTRUMENT, exposure=seeded.exposure_id,
        )  # fmt: skip
        ids |= {str(ref.id) for ref in refs}
    records = main.query_dimension_records(
        "exposure", instrument=lsstcam.INSTRUMENT, exposure=seeded.exposure_id, explain=False
    )
    visits = main.query_dimension_records(
        "visit", instrument=lsstcam.INSTRUMENT, visit=seeded.exposure_id, explain=False
    )
    return ids, (records[0].toDict() if records else None), len(visits)


def main_state_now(lab: Lab, seeded: SeededExposure) -> tuple[set[str], dict[str, Any] | None, int]:
    """``main_state`` of a main butler opened for this one look, as it is now."""
    with Butler.from_config(lab.settings.main_butler) as main:
        return main_state(main, seeded)


@dataclass
class Run:
    """One case as the batch left it."""

    case: Case
    seeded: SeededExposure
    bucket: dict[str, str]
    dest: dict[str, tuple[str, int, int]]
    main: tuple[set[str], dict[str, Any] | None, int]
    error: ApplicationError | None = None
    timers: int = 0
    zip_attempts: int = 0
    starts: list[str] = field(default_factory=list)


def _exposure(seeded: SeededExposure) -> Exposure:
    return Exposure(lsstcam.INSTRUMENT, seeded.day_obs, seeded.obs_id, seeded.exposure_id)


def _seed_all(lab: Lab) -> dict[str, SeededExposure]:
    """Each case's exposure, on a day_obs of its own (or of its group), seq_num 101 on."""
    days: dict[str, int] = {}
    seeded = {}
    with Butler.from_config(lab.settings.embargo_butler, writeable=True) as butler:
        for seq, case in enumerate(CASES, start=101):
            key = case.day or case.name
            if key not in days:
                days[key] = int((FIRST_DAY + timedelta(days=len(days))).strftime("%Y%m%d"))
            options = {"detectors": FEW, "expected": FEW, "file_size": FILE_SIZE, **case.seed}
            seeded[case.name] = seed_exposure(
                lab.settings, days[key], seq, butler=butler, s3=lab.s3, **options
            )
    return seeded


async def _outcome(run: Run, handle: WorkflowHandle[Any, Any]) -> None:
    """Await the run; note its named error and how often it waited and zipped."""
    try:
        await handle.result()
    except WorkflowFailureError as err:
        assert isinstance(err.cause, ApplicationError), err.cause
        run.error = err.cause
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            run.timers += 1
        attrs = event.activity_task_scheduled_event_attributes
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and (
            attrs.activity_type.name == STEPS[Step.ZIP].activity
        ):
            run.zip_attempts += 1


@pytest.fixture(scope="module")
async def batch(
    settings: Settings, client: Client, rucio: RucioClient, worker: WorkerProcess
) -> dict[str, Run]:
    """Seed and spoil every case, start them all in one batch, wait for every outcome."""
    with tempfile.TemporaryDirectory() as scratch:
        lab = Lab(settings, boto3.client("s3", endpoint_url=settings.s3_endpoint_url), rucio, Path(scratch))
        seeded = _seed_all(lab)
        for case in CASES:
            if case.spoil is not None:
                case.spoil(lab, seeded[case.name])
        with Butler.from_config(settings.main_butler) as main:
            runs = {
                name: Run(BY_NAME[name], s, bucket_listing(lab, s), dest_files(lab, s), main_state(main, s))
                for name, s in seeded.items()
            }
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    exposures = [_exposure(s) for s in seeded.values()]
    duplicate = _exposure(seeded[DUPLICATE])
    queue = settings.workflow_task_queue
    # One start listing the duplicate twice, and a second start of it at the same time.
    outcomes: list[list[StartOutcome]] = await asyncio.gather(
        start_exposures(client, queue, [*exposures, duplicate], queues, POLICY),
        start_exposures(client, queue, [duplicate], queues, POLICY),
    )
    for outcome in (o for started in outcomes for o in started):
        runs[_name_of(runs, outcome.exposure)].starts.append(outcome.outcome)
    handles = {name: client.get_workflow_handle(names.workflow_id(lsstcam.INSTRUMENT, r.seeded.obs_id))
               for name, r in runs.items()}  # fmt: skip
    pending = {name: asyncio.ensure_future(_outcome(runs[name], h)) for name, h in handles.items()}
    done, late = await asyncio.wait(pending.values(), timeout=BATCH_TIMEOUT_S)
    for future in done:
        future.result()
    assert not late, f"not finished after {BATCH_TIMEOUT_S}s: {[n for n, f in pending.items() if f in late]}"
    assert worker.alive(), worker.output()[-3000:]
    return runs


def _name_of(runs: Mapping[str, Run], exposure: Exposure) -> str:
    return next(name for name, run in runs.items() if run.seeded.obs_id == exposure.obs_id)


# ---------------------------------------------------------------- the checks


def test_docs_table_lists_exactly_the_cases() -> None:
    """docs/bad-input.md has one row per case, in the same order."""
    table = (Path(__file__).parents[2] / "docs" / "bad-input.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.MULTILINE)
    assert rows == [case.name for case in CASES]


@pytest.mark.parametrize("name", [case.name for case in CASES])
def test_case_has_its_outcome_and_keeps_everything(
    name: str, batch: dict[str, Run], settings: Settings, rucio: RucioClient
) -> None:
    run = batch[name]
    case, seeded = run.case, run.seeded
    lab = Lab(settings, boto3.client("s3", endpoint_url=settings.s3_endpoint_url), rucio, Path())
    if case.outcome == DONE:
        assert run.error is None, f"{run.error.type}: {run.error.message}" if run.error else ""
        check_unembargoed(settings, seeded.day_obs, seeded.obs_id, seeded.exposure_id, list(seeded.tracts))
    else:
        assert run.error is not None, f"{name} completed; expected {case.outcome}"
        assert (run.error.type, run.error.message.split(":")[0]) == (case.outcome, f"step {case.step}")
        for text in case.says:
            assert text.format(obs_id=seeded.obs_id) in run.error.message, run.error.message
    # Nothing lost or overwritten: the bucket as it was, every destination file as it was.
    assert bucket_listing(lab, seeded) == run.bucket
    after = dest_files(lab, seeded)
    kept = {n: v for n, v in run.dest.items() if not n.endswith(".partial")}
    assert {n: after.get(n) for n in kept} == kept
    # Staging files never outlive an attempt, whatever its outcome.
    assert not [n for n in after if n.endswith(".partial")]
    ledger = effects(settings, {seeded.obs_id})
    assert all(count == 1 for count in ledger.values()), ledger
    if case.step in ("zip", "export", "ingest"):
        assert main_state_now(lab, seeded) == run.main, "the main butler changed"
        with pytest.raises(DataIdentifierNotFound):
            rucio.get_did(
                settings.rucio_scope, names.obs_dataset(lsstcam.INSTRUMENT, seeded.day_obs, seeded.obs_id)
            )
    if case.step == "zip":
        assert set(after) == set(kept), "the zip step left a file behind"
        assert not ledger, ledger
    EXTRA_CHECKS.get(name, lambda *_: None)(run, lab)


def _zip_names(lab: Lab, seeded: SeededExposure) -> dict[str, int]:
    with zipfile.ZipFile(check_zip(lab.settings, seeded.day_obs, seeded.obs_id)) as zf:
        return {info.filename: info.file_size for info in zf.infolist()}


def _waited(run: Run, lab: Lab) -> None:
    """Waited on durable timers, tried again, and zipped nothing."""
    assert run.timers >= 1 and run.zip_attempts == run.timers + 1, (run.timers, run.zip_attempts)


def _did_not_wait(run: Run, lab: Lab) -> None:
    assert (run.timers, run.zip_attempts) == (0, 1)


def _zero_bytes_zipped(run: Run, lab: Lab) -> None:
    members = _zip_names(lab, run.seeded)
    assert members["empty marker.txt"] == members[raw_name(run.seeded, 1, ".json")] == 0


def _sidecar_absent(run: Run, lab: Lab) -> None:
    members = _zip_names(lab, run.seeded)
    assert raw_name(run.seeded, 1) in members and raw_name(run.seeded, 1, ".json") not in members


def _one_workflow(run: Run, lab: Lab) -> None:
    """Three starts, one workflow: the others found it running (or done)."""
    assert len(run.starts) == 3 and run.starts.count("started") == 1, run.starts
    assert set(run.starts) <= {"started", "running", "completed"}, run.starts


def _names_zipped(*wanted: str) -> Callable[[Run, Lab], None]:
    def check(run: Run, lab: Lab) -> None:
        assert set(wanted) <= set(_zip_names(lab, run.seeded))

    return check


def _nothing_escaped(run: Run, lab: Lab) -> None:
    assert not list(lab.settings.dest_root.parent.rglob("escape.json"))


def _rucio_unchanged(run: Run, lab: Lab) -> None:
    """The foreign replica kept its values; no dataset was created or attached to."""
    scope, seeded = lab.settings.rucio_scope, run.seeded
    did = lab.rucio.get_did(scope, names.zip_relpath(lsstcam.INSTRUMENT, seeded.day_obs, seeded.obs_id))
    assert (did["bytes"], did["adler32"]) == (1234, FOREIGN_ADLER32)
    with pytest.raises(DataIdentifierNotFound):
        lab.rucio.get_did(scope, names.obs_dataset(lsstcam.INSTRUMENT, seeded.day_obs, seeded.obs_id))
    # The steps before register are done and kept.
    check_zip(lab.settings, seeded.day_obs, seeded.obs_id)
    assert len(main_state_now(lab, seeded)[0]) == len(FEW)


def _main_kept_its_dataset(run: Run, lab: Lab) -> None:
    ids, _, _ = main_state_now(lab, run.seeded)
    assert len(ids) == 1 and ids == run.main[0]


def _main_kept_its_record(run: Run, lab: Lab) -> None:
    ids, record, visits = main_state_now(lab, run.seeded)
    assert not ids and record is not None and record["observation_reason"] == "engineering"
    # Refused before the yaml's other records (the visit, its regions) were imported beside it.
    assert visits == 0


EXTRA_CHECKS: dict[str, Callable[[Run, Lab], None]] = {
    "expected-sensors-missing": _waited,
    "fewer-raws-than-expected": _waited,
    "expected-sensors-not-json": _did_not_wait,
    "expected-sensors-without-list": _did_not_wait,
    "zero-byte-sidecar-and-object": _zero_bytes_zipped,
    "sidecar-missing": _sidecar_absent,
    DUPLICATE: _one_workflow,
    "keys-with-spaces-and-unicode": _names_zipped(*ODD_KEYS),
    "dotdot-component": _nothing_escaped,
    "dots-inside-a-name": _names_zipped(DOTS_IN_NAME),
    "component-over-255-bytes": _names_zipped(LONG_COMPONENT),
    "key-over-1024-bytes": _names_zipped(LONG_KEY),
    "rucio-replica-other-checksums": _rucio_unchanged,
    "main-holds-data-id-under-other-id": _main_kept_its_dataset,
    "main-exposure-record-differs": _main_kept_its_record,
}
