"""``unembargo reconcile``: which exposures of a day are not fully unembargoed, and why.

    >>> result = asyncio.run(run_reconcile(Settings(), ReconcileRequest(day_obs=20251231)))  # doctest: +SKIP
    >>> result.final.counts["missing"]  # doctest: +SKIP
    0

An inventory of the day is taken from each source with a few batched calls (never
one round trip per exposure), the five sources at once: the embargo bucket's folders
(a delimiter listing), the embargo and main butlers (a handful of day-wide queries),
the destination folder (one stat per file), Rucio (pattern listings and bulk calls)
and Temporal (one visibility query of unembargo runs, one of arrival runs).
``classify`` then judges every exposure from the inventory alone, so it runs (and is
tested) without any service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session
from temporalio.client import Client

from unembargo.client.progress import Progress, day_runs, watch
from unembargo.client.status import day_arrivals, with_embargo_ends
from unembargo.engine.connection import connect
from unembargo.engine.errors import SourceUnavailable
from unembargo.engine.starter import StartOutcome, settings_policy, start_exposures
from unembargo.models import names
from unembargo.models.exposure import STEPS, Exposure, Step
from unembargo.models.reconcile import (
    ARRIVAL_ARRIVING,
    ARRIVAL_EMBARGOED,
    ARRIVAL_INCOMPLETE,
    ARRIVING,
    CLASSES,
    CORRUPT,
    EMBARGOED,
    FAILED,
    HALF_DONE,
    INCOMPLETE,
    MISSING,
    NEEDS_ACTION,
    ORPHAN,
    REPAIRABLE,
    RUNNING,
    SOURCES,
    UNEMBARGOED,
    UNREGISTERED,
    ArrivalRun,
    EmbargoExposure,
    Inventory,
    MainHolding,
    ObsDataset,
    RucioDay,
    StagingFile,
    Verdict,
    WorkflowRun,
)
from unembargo.models.settings import Settings
from unembargo.models.tables import connect as db_connect
from unembargo.models.tables import step_queues

if TYPE_CHECKING:
    # The clients' libraries load in load_clients, off the event loop.
    from lsst.daf.butler import Butler

    from unembargo.adapters.butler import Records
    from unembargo.adapters.butler_inventory import HeldDataset
    from unembargo.adapters.s3 import S3Object


@dataclass(frozen=True)
class ReconcileRequest:
    """Which day to reconcile."""

    day_obs: int
    instrument: str = "LSSTCam"
    # Ask the sources one after another: slower, but each source's time is its own
    # (the benchmark's split); by default they are asked at once.
    sequential: bool = False
    # Also compare what exists with its sources (zip members with the bucket, zip indexes
    # with the main butler's datasets, yaml records with the embargo butler's, files on
    # disk with their Rucio checksums): reads every zip and yaml of the day.
    verify: bool = False


# ---------------------------------------------------------------- inventory


async def take_inventory(
    settings: Settings, request: ReconcileRequest, client: Client | None = None, now: datetime | None = None
) -> Inventory:
    """Everything the five sources say about the day; each source's wall time in ``seconds``."""
    inst, day = names.check_name("instrument", request.instrument), names.check_day_obs(request.day_obs)
    now = now or datetime.now(UTC)
    jobs: dict[str, Callable[[], Awaitable[Any]]] = {
        "s3": lambda: asyncio.to_thread(_s3_folders, settings, inst, day),
        "butler": lambda: asyncio.to_thread(_butlers, settings, inst, day, now),
        "destination": lambda: asyncio.to_thread(_destination, settings, inst, day),
        "rucio": lambda: asyncio.to_thread(_rucio, settings, inst, day),
        "temporal": lambda: _temporal(settings, client, inst, day),
    }
    seconds: dict[str, float] = {}
    found = await _run_sources(jobs, seconds, request.sequential)
    exposures, main = found["butler"]
    installed, staging = found["destination"]
    inv = Inventory(
        instrument=inst,
        day_obs=day,
        bucket_url=f"s3://{settings.s3_bucket}/{names.day_prefix(settings.s3_prefix, inst, day)}",
        folders=frozenset(found["s3"]),
        exposures=exposures,
        main=main,
        destination=installed,
        staging=staging,
        rucio=found["rucio"],
        workflows=found["temporal"][0],
        arrivals=with_embargo_ends(
            found["temporal"][1], {obs_id: exp.embargo_end for obs_id, exp in exposures.items()}
        ),
        seconds=seconds,
    )
    if request.verify:
        started = time.perf_counter()
        try:
            inv.deep = await asyncio.to_thread(_deep, settings, inv)
        except Exception as err:
            raise SourceUnavailable("verify", err) from err
        seconds["verify"] = time.perf_counter() - started
    return inv


async def _run_sources(
    jobs: dict[str, Callable[[], Awaitable[Any]]], seconds: dict[str, float], sequential: bool
) -> dict[str, Any]:
    """Run every source's job, together or in turn, timing each."""

    async def timed(source: str) -> Any:
        started = time.perf_counter()
        try:
            return await jobs[source]()
        except Exception as err:
            raise SourceUnavailable(source, err) from err
        finally:
            seconds[source] = time.perf_counter() - started

    if sequential:
        return {source: await timed(source) for source in jobs}
    results = await asyncio.gather(*(timed(source) for source in jobs))
    return dict(zip(jobs, results, strict=True))


def load_clients() -> None:
    """Import what the sources need (daf_butler, boto3, rucio-clients: a few seconds, once)."""
    import boto3  # noqa: F401

    import unembargo.adapters.butler_inventory
    import unembargo.adapters.rucio
    import unembargo.adapters.rucio_client  # noqa: F401


def _s3_folders(settings: Settings, instrument: str, day_obs: int) -> list[str]:
    from unembargo.adapters.s3 import connect, list_subfolders

    prefix = names.day_prefix(settings.s3_prefix, instrument, day_obs)
    return list_subfolders(connect(settings.s3_endpoint_url), settings.s3_bucket, prefix)


def _butlers(
    settings: Settings, instrument: str, day_obs: int, now: datetime
) -> tuple[dict[str, EmbargoExposure], dict[str, MainHolding]]:
    from lsst.daf.butler import Butler

    from unembargo.adapters.butler_inventory import day_exposures, main_holdings

    with (
        Butler.from_config(settings.embargo_butler, writeable=False) as embargo,
        Butler.from_config(settings.main_butler, writeable=False) as main,
    ):
        exposures = day_exposures(embargo, instrument, day_obs, settings.rules(), now)
        return exposures, main_holdings(main, embargo, instrument, day_obs)


def _destination(settings: Settings, instrument: str, day_obs: int) -> tuple[dict[str, int], dict[str, int]]:
    from unembargo.adapters.destination import scan_day

    return scan_day(settings.dest_root.resolve(), names.day_relpath(instrument, day_obs))


# Zips verified at once: each is read whole (CRCs and md5s), so this bounds disk reads.
VERIFY_THREADS = 4


def _deep(settings: Settings, inv: Inventory) -> dict[str, dict[str, str]]:
    """What differs between each existing zip or yaml and its sources, by obs_id and step.

    One listing of the day's bucket prefix (all its objects, paged); then, for
    ``VERIFY_CHUNK`` exposures at a time, the records their yamls must hold (the embargo
    butler) and the raws the main butler holds of them with their files (a few queries
    per chunk, never one per exposure), and each of their files compared in a small
    thread pool: a zip with its folder's objects (``verify_zip``: names, sizes, md5s,
    indexes) and its butler index with the main butler's datasets, a yaml's records with
    the embargo butler's, and every registered file's bytes, adler32 and md5 with Rucio's.
    """
    from concurrent.futures import ThreadPoolExecutor

    from lsst.daf.butler import Butler

    from unembargo.adapters.butler_inventory import VERIFY_CHUNK, chunk_datasets, chunk_records
    from unembargo.adapters.s3 import connect as s3_connect
    from unembargo.adapters.s3 import list_folder

    prefix = names.day_prefix(settings.s3_prefix, inv.instrument, inv.day_obs)
    by_folder: dict[str, dict[str, S3Object]] = {}
    for obj in list_folder(s3_connect(settings.s3_endpoint_url), settings.s3_bucket, prefix):
        folder, _, member = obj.key[len(prefix) :].partition("/")
        if member:
            by_folder.setdefault(folder, {})[member] = obj
    files: dict[str, list[str]] = {}
    for name in sorted(inv.destination):
        if parsed := names.parse_day_file(name):
            files.setdefault(parsed[0], []).append(name)
    deep: dict[str, dict[str, str]] = {}
    with (
        Butler.from_config(settings.embargo_butler, writeable=False) as embargo,
        Butler.from_config(settings.main_butler, writeable=False) as main,
        ThreadPoolExecutor(VERIFY_THREADS) as pool,
    ):
        obs_ids = sorted(files)
        for chunk in (obs_ids[i : i + VERIFY_CHUNK] for i in range(0, len(obs_ids), VERIFY_CHUNK)):
            ids = [inv.exposures[o].exposure_id for o in chunk if o in inv.exposures]
            held_ids = [inv.exposures[o].exposure_id for o in chunk if o in inv.exposures and o in inv.main]
            check = _Verify(
                settings.dest_root.resolve(),
                inv,
                by_folder,
                embargo,
                chunk_records(embargo, inv.instrument, ids) if ids else {},
                chunk_datasets(main, inv.instrument, held_ids) if held_ids else {},
            )
            jobs = [name for obs_id in chunk for name in files[obs_id]]
            for name, problems in zip(jobs, pool.map(check.file, jobs), strict=True):
                deep.setdefault(name_owner(name), {}).update(problems)
    return {obs_id: problems for obs_id, problems in deep.items() if problems}


def name_owner(name: str) -> str:
    """The obs_id of a zip's or yaml's relative path."""
    parsed = names.parse_day_file(name)
    assert parsed is not None, "only the day's zips and yamls are verified"
    return parsed[0]


@dataclass(frozen=True)
class _Verify:
    """What one chunk's files are compared with."""

    root: Path
    inv: Inventory
    by_folder: dict[str, dict[str, S3Object]]
    embargo: Butler
    # Exposure id -> the records its yaml must hold; -> the main butler's raws of it.
    records: dict[int, Records]
    held: dict[int, dict[str, HeldDataset]]

    def file(self, name: str) -> dict[str, str]:
        """The deep problems of one zip or yaml at the destination, by step."""
        from unembargo.adapters.butler_inventory import index_differences, yaml_differences
        from unembargo.adapters.destination import checksums
        from unembargo.adapters.zipping import differences_text, verify_zip

        inv = self.inv
        parsed = names.parse_day_file(name)
        assert parsed is not None
        obs_id, kind = parsed
        path = self.root / name
        problems: dict[str, str] = {}
        exp = inv.exposures.get(obs_id)
        if kind == "zip" and exp is not None:
            members = self.by_folder.get(obs_id, {})
            check = verify_zip(path, members, Exposure(inv.instrument, inv.day_obs, obs_id, exp.exposure_id))
            if check.foreign:
                problems[Step.ZIP] = (
                    f"the zip belongs to another exposure (its butler index lists {check.foreign})"
                )
            elif check.differences:
                problems[Step.ZIP] = (
                    f"the zip does not match {inv.bucket_url}{obs_id}/: {differences_text(check.differences)}"
                )
            if not check.foreign and obs_id in inv.main:
                wrong = index_differences(path, self.held.get(exp.exposure_id, {}))
                if wrong:
                    problems[Step.INGEST] = (
                        f"the main butler's datasets do not match the zip's index: {'; '.join(wrong)}"
                    )
        if kind == "yaml" and exp is not None:
            wrong = yaml_differences(path, self.records.get(exp.exposure_id, {}), self.embargo)
            if wrong:
                problems[Step.EXPORT] = (
                    f"the yaml's records differ from the embargo butler's: {'; '.join(wrong)}"
                )
        held = inv.rucio.files.get(name)
        if held is not None:
            size, md5, adler32 = checksums(path)
            wrong = [
                f"{what} {have} in Rucio, {want} on disk"
                for what, have, want in (
                    ("bytes", held.bytes, size),
                    ("adler32", held.adler32, adler32),
                    ("md5", held.md5, md5),
                )
                if have is not None and have != want
            ]
            if wrong:
                problems[Step.REGISTER] = f"the {kind} is registered with {', '.join(wrong)}"
        return problems


def _rucio(settings: Settings, instrument: str, day_obs: int) -> RucioDay:
    from unembargo.adapters.rucio import day_catalog
    from unembargo.adapters.rucio_client import connect as rucio_connect

    return day_catalog(rucio_connect(settings), settings.rucio_scope, instrument, day_obs)


async def _temporal(
    settings: Settings, client: Client | None, instrument: str, day_obs: int
) -> tuple[dict[str, WorkflowRun], dict[str, ArrivalRun]]:
    """The day's unembargo runs and arrival runs: one visibility query each, at once."""
    client = client or await connect(settings)
    runs, arrivals = await asyncio.gather(
        day_runs(client, instrument, day_obs), day_arrivals(client, instrument, day_obs)
    )
    return runs, arrivals


# ---------------------------------------------------------------- classification


def classify(inv: Inventory) -> list[Verdict]:
    """Every exposure any source knows of, judged; in class order, then by obs_id."""
    order = {klass: i for i, klass in enumerate(CLASSES)}
    verdicts = [judge(inv, obs_id) for obs_id in known_exposures(inv)]
    return sorted(verdicts, key=lambda v: (order[v.klass], v.obs_id))


def known_exposures(inv: Inventory) -> set[str]:
    """obs_ids that the bucket, a butler, the destination, Rucio or Temporal (unembargo or
    arrival workflows) mention."""
    files = {p[0] for name in (*inv.destination, *inv.rucio.files) if (p := names.parse_day_file(name))}
    keyed = (inv.folders, inv.exposures, inv.main, inv.rucio.obs, inv.workflows, inv.arrivals)
    return files.union(*keyed)


def judge(inv: Inventory, obs_id: str) -> Verdict:
    """One exposure's class and the reason for it."""
    problems = step_problems(inv, obs_id)
    done = tuple(step for step in STEPS if problems[step] is None)
    exp = inv.exposures.get(obs_id)
    klass, reason = _class_and_reason(inv, obs_id, problems, done)
    return Verdict(
        obs_id=obs_id,
        klass=klass,
        reason=reason,
        done=done,
        exposure_id=exp.exposure_id if exp else None,
        due=bool(exp and exp.due),
        workflow=inv.workflows.get(obs_id),
        arrival=inv.arrivals.get(obs_id),
    )


def _class_and_reason(
    inv: Inventory, obs_id: str, problems: dict[str, str | None], done: tuple[str, ...]
) -> tuple[str, str]:
    """The first class that fits, in this order: running, arriving, orphan, corrupt,
    unembargoed, incomplete, no-butler-record, failed, embargoed, half-done, missing."""
    exp = inv.exposures.get(obs_id)
    run = inv.workflows.get(obs_id)
    arrival = inv.arrivals.get(obs_id)
    if run is not None and run.status == "running":
        return RUNNING, _running(run)
    if arrival is not None and arrival.state == ARRIVAL_ARRIVING:
        return ARRIVING, f"{arrival.describe(inv.day_obs)}{_done_note(done)}; {_last_run(run)}"
    found = _artefacts(inv, obs_id)
    if obs_id not in inv.folders and found:
        where = f"not in the embargo bucket ({inv.bucket_url})"
        return ORPHAN, f"{where} but found: {', '.join(found)}; {_last_run(run)}"
    if exp is None and obs_id not in inv.folders:
        return MISSING, f"known only to Temporal ({_last_run(run)}): not in the embargo bucket or butler"
    deep = inv.deep.get(obs_id)
    if deep:
        wrong = "; ".join(f"{step}: {problem}" for step, problem in deep.items())
        return CORRUPT, (
            f"{wrong}; {_last_run(run)}. Nothing was changed: find which side is wrong "
            "(the bucket object or the unembargoed copy) before moving anything"
        )
    if len(done) == len(STEPS):
        early = "" if exp is None or exp.due else f", although {_embargo(exp)}"
        return UNEMBARGOED, f"every step done{early}"
    if arrival is not None and arrival.state == ARRIVAL_INCOMPLETE:
        return INCOMPLETE, f"{arrival.describe(inv.day_obs)}{_done_note(done)}; {_last_run(run)}"
    if exp is None:
        heard = (
            f"; its arrival: {arrival.describe(inv.day_obs)}"
            if arrival is not None
            else f"; no arrival workflow has heard of it (if arrivals ingest this bucket, "
            f"`unembargo arrivals sweep --day {inv.day_obs}` finds it)"
        )
        return UNREGISTERED, (
            f"a folder in {inv.bucket_url} but no exposure record in the embargo butler, so "
            f"nothing can unembargo it{_done_note(done)}; {_last_run(run)}{heard}. Ingest its raws "
            "into the embargo butler (or remove the folder if it is no exposure)"
        )
    if run is not None and run.status in ("failed", "timed_out"):
        return FAILED, f"{run.error or run.status}{_done_note(done)}"
    if not exp.due and not done:
        if arrival is not None and arrival.state == ARRIVAL_EMBARGOED:
            return EMBARGOED, f"{arrival.describe(inv.day_obs)}; {_last_run(run)}"
        return EMBARGOED, f"{_embargo(exp)}; {_last_run(run)}"
    if done:
        held = "" if exp.due else f"; {_embargo(exp)}: --repair leaves it alone"
        return HALF_DONE, f"{_steps_summary(problems, done)}; {_last_run(run)}{held}"
    absent = "" if obs_id in inv.folders else f"; and it has no folder in {inv.bucket_url}"
    return MISSING, f"past its embargo period and no step done; {_last_run(run)}{absent}"


def step_problems(inv: Inventory, obs_id: str) -> dict[str, str | None]:
    """Each step's "done when" against the inventory: None when it holds, else what is wrong."""
    try:
        zip_name = names.zip_relpath(inv.instrument, inv.day_obs, obs_id)
        yaml_name = names.yaml_relpath(inv.instrument, inv.day_obs, obs_id)
    except names.InvalidName:
        return {step: "not a valid obs_id" for step in STEPS}
    deep = inv.deep.get(obs_id, {})
    return {
        step: deep.get(step) or problem
        for step, problem in _shallow_problems(inv, obs_id, zip_name, yaml_name).items()
    }


def _shallow_problems(inv: Inventory, obs_id: str, zip_name: str, yaml_name: str) -> dict[str, str | None]:
    """Each step's "done when" judged on names, sizes and listings alone."""
    return {
        Step.ZIP: None if zip_name in inv.destination else "no zip at the destination",
        Step.EXPORT: None if yaml_name in inv.destination else "no dimension yaml at the destination",
        Step.INGEST: _ingest(inv.main.get(obs_id)),
        Step.REGISTER: _register(inv, obs_id, {"zip": zip_name, "yaml": yaml_name}),
        Step.TAG: _tag(inv.rucio.obs.get(obs_id)),
    }


def _ingest(holding: MainHolding | None) -> str | None:
    if holding is None:
        return "the main butler holds none of its raws"
    return None if holding.complete else holding.detail


def _register(inv: Inventory, obs_id: str, files: dict[str, str]) -> str | None:
    """Both files registered (size as on disk, checksums, a replica) and in every dataset.

    Without the embargo butler's record the tracts are unknown: only Obs is required then.
    """
    exp = inv.exposures.get(obs_id)
    datasets = (
        names.exposure_datasets(inv.instrument, inv.day_obs, obs_id, exp.tracts)
        if exp is not None
        else [names.obs_dataset(inv.instrument, inv.day_obs, obs_id)]
    )
    problems: list[str] = []
    for kind, name in files.items():
        held = inv.rucio.files.get(name)
        if held is None:
            problems.append(f"the {kind} is not registered")
            continue
        size = inv.destination.get(name)
        if size is not None and held.bytes != size:
            problems.append(f"the {kind} is registered with {held.bytes} bytes, the file has {size}")
        if not (held.adler32 and held.md5):
            problems.append(f"the {kind} has no adler32/md5 in Rucio")
        if not held.available:
            problems.append(f"the {kind} has no available replica")
        lacking = [d for d in datasets if d not in held.parents]
        if lacking:
            problems.append(f"the {kind} is not in {', '.join(lacking)}")
    return "; ".join(problems) or None


def _tag(obs: ObsDataset | None) -> str | None:
    if obs is None:
        return "no Obs dataset"
    problems = ["the Obs dataset is open"] if obs.open else []
    if obs.backup != names.BACKUP_VALUE:
        problems.append(f"{names.BACKUP_KEY} is {'not set' if obs.backup is None else repr(obs.backup)}")
    return "; ".join(problems) or None


def _artefacts(inv: Inventory, obs_id: str) -> list[str]:
    """What the exposure left at the destination, in Rucio and in the main butler."""
    try:
        files = [names.zip_relpath(inv.instrument, inv.day_obs, obs_id)]
        files.append(names.yaml_relpath(inv.instrument, inv.day_obs, obs_id))
    except names.InvalidName:
        files = []
    found = []
    for where, held in (("at the destination", inv.destination), ("in Rucio", inv.rucio.files)):
        present = [name.rpartition("/")[2] for name in files if name in held]
        if present:
            found.append(f"{' and '.join(present)} {where}")
    if obs_id in inv.rucio.obs:
        found.append("its Obs dataset in Rucio")
    if obs_id in inv.main:
        found.append("raws in the main butler")
    return found


def _running(run: WorkflowRun) -> str:
    text = f"at step {run.step}"
    if run.activity:
        text += f", {run.activity} attempt {run.attempt}"
    if run.last_failure:
        text += f", last error: {run.last_failure}"
    return text


def _last_run(run: WorkflowRun | None) -> str:
    if run is None:
        return "no workflow"
    if run.status == "completed":
        return "its workflow completed"
    return f"its last run {run.status} at step {run.step}"


def _embargo(exp: EmbargoExposure | None) -> str:
    if exp is None:
        return "not in the embargo butler, so its embargo period cannot be judged"
    if exp.embargo_end is not None:
        ended = f" (its embargo ends {exp.embargo_end:%Y-%m-%d %H:%M} UTC)"
    else:
        ended = f" (it ended {exp.end:%Y-%m-%d %H:%M} UTC)" if exp.end else ""
    return f"not yet past its embargo period under the configured rules{ended}"


def _done_note(done: tuple[str, ...]) -> str:
    return f" (done: {', '.join(done)})" if done else ""


def _steps_summary(problems: dict[str, str | None], done: tuple[str, ...]) -> str:
    todo = [f"{step} ({problem})" for step, problem in problems.items() if problem is not None]
    return f"done: {', '.join(done)}; not done: {', '.join(todo)}"


def staging_files(inv: Inventory) -> list[StagingFile]:
    """The day folder's staging files, each with its exposure and whether a run may be using it."""
    from unembargo.adapters.destination import parse_staging

    out = []
    for name, size in sorted(inv.staging.items()):
        parsed = parse_staging(name)
        assert parsed is not None, "the inventory holds staging names only"
        final, made_by = parsed
        owner = names.parse_day_file(final)
        obs_id = owner[0] if owner else None
        run = inv.workflows.get(obs_id) if obs_id else None
        in_use = made_by == "ours" and run is not None and run.status == "running"
        out.append(StagingFile(name, size, obs_id, made_by, in_use))
    return out


# ---------------------------------------------------------------- results


@dataclass
class Reconciliation:
    """The verdicts on one day, and how long each source took."""

    instrument: str
    day_obs: int
    verdicts: list[Verdict]
    seconds: dict[str, float]
    staging: list[StagingFile] = field(default_factory=list)
    verified: bool = False

    @property
    def stale(self) -> list[StagingFile]:
        """Staging files no running workflow may be writing: left by a crash or the old tool."""
        return [f for f in self.staging if not f.in_use]

    def of(self, klass: str) -> list[Verdict]:
        return [v for v in self.verdicts if v.klass == klass]

    @property
    def counts(self) -> dict[str, int]:
        return {klass: len(self.of(klass)) for klass in CLASSES}

    @property
    def ok(self) -> bool:
        """Nothing that needs action: no exposure in such a class, no stale staging file."""
        return not self.stale and not any(v.klass in NEEDS_ACTION for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument,
            "day_obs": self.day_obs,
            "ok": self.ok,
            "verified": self.verified,
            "counts": self.counts,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "exposures": [v.as_dict() for v in self.verdicts],
            "staging": [f.as_dict() for f in self.staging],
        }


async def reconcile_day(
    settings: Settings, request: ReconcileRequest, client: Client | None = None, now: datetime | None = None
) -> Reconciliation:
    """Take the day's inventory and judge every exposure in it.

    The clients' libraries are imported first: start-up is nobody's source time.
    """
    await asyncio.to_thread(load_clients)
    started = time.perf_counter()
    inv = await take_inventory(settings, request, client, now)
    verdicts = classify(inv)
    seconds = {source: inv.seconds[source] for source in (*SOURCES, "verify") if source in inv.seconds}
    seconds["total"] = time.perf_counter() - started
    return Reconciliation(inv.instrument, inv.day_obs, verdicts, seconds, staging_files(inv), request.verify)


@dataclass
class Repair:
    """What --repair started and how those runs ended."""

    outcomes: list[StartOutcome] = field(default_factory=list)
    finished: list[Progress] = field(default_factory=list)
    # Needing action but not started: not past their embargo, or unknown to the embargo butler.
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        final = {p.workflow_id: p.status for p in self.finished}
        return {
            "started": [
                {"obs_id": o.exposure.obs_id, "outcome": o.outcome, "final": final.get(o.workflow_id)}
                for o in self.outcomes
            ],
            "skipped": self.skipped,
        }


async def repair(
    settings: Settings,
    client: Client,
    before: Reconciliation,
    on_update: Callable[[list[Progress]], None] | None = None,
) -> Repair:
    """(Re)start a workflow for every repairable exposure and watch them all finish.

    Same workflow ids and the same check-first steps: what is done is found done, the
    rest is done. Completed and failed runs are followed by a new run; running ones
    are left alone.
    """
    todo = [v for v in before.verdicts if v.repairable]
    left = [v.obs_id for v in before.verdicts if v.klass in REPAIRABLE and not v.repairable]
    result = Repair(skipped=left)
    if not todo:
        return result
    exposures = [_exposure(before, v) for v in todo]
    with Session(db_connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    result.outcomes = await start_exposures(
        client,
        settings.workflow_task_queue,
        exposures,
        queues,
        settings_policy(settings),
        restart_failed=True,
        rerun_completed=True,
    )
    ids = [o.workflow_id for o in result.outcomes if o.outcome in ("started", "running")]
    if ids:
        result.finished = await watch(client, ids, on_update or (lambda rows: None))
    return result


def _exposure(rec: Reconciliation, verdict: Verdict) -> Exposure:
    assert verdict.exposure_id is not None, "repairable verdicts have an exposure id"
    return Exposure(rec.instrument, rec.day_obs, verdict.obs_id, verdict.exposure_id)


@dataclass
class ReconcileResult:
    before: Reconciliation
    repair: Repair | None = None
    after: Reconciliation | None = None

    @property
    def final(self) -> Reconciliation:
        return self.after or self.before

    @property
    def ok(self) -> bool:
        return self.final.ok

    def as_dict(self) -> dict[str, Any]:
        """The final reconciliation; with --repair, also what was started and the counts before."""
        out = self.final.as_dict()
        if self.repair is not None:
            out["repair"] = {"before": self.before.counts, **self.repair.as_dict()}
        return out


async def run_reconcile(
    settings: Settings,
    request: ReconcileRequest,
    do_repair: bool = False,
    on_update: Callable[[list[Progress]], None] | None = None,
) -> ReconcileResult:
    """Reconcile the day; with ``do_repair``, repair it and, if anything was started, reconcile again."""
    client = await connect(settings)
    result = ReconcileResult(before=await reconcile_day(settings, request, client))
    if do_repair:
        result.repair = await repair(settings, client, result.before, on_update)
        if result.repair.outcomes:
            result.after = await reconcile_day(settings, request, client)
    return result
