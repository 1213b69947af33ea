"""The FITS flow end to end on the real stack: Temporal, moto S3 and a real worker process.

A night of real FITS files (GMOS-N with extensions and NIRI; bias, flat, dark and science
frames) is written onto a DHS folder with a corrupt file, a temporary name and a text file
beside them. `unembargo fits watch`'s poller copies each valid file to the dataflow disk
with its md5, its workflow ingests the headers, exports it to the archive (an S3 bucket:
md5 asked first, md5 and size checked after) and to a mirror bucket that does not exist
at first (a destination down: backed off, visibly, while the archive goes on), ingests
it at the archive, makes its preview and its calibration associations (rows the archive
writes to its own database, a PostgreSQL database of the stack's server; the summit's
ingest goes to the main one). The corrupt file is reported by name, never copied. Files
written while the worker restarts are caught up with, a touched one is not copied again;
a file rewritten on the dataflow disk is re-ingested by `requeue` and exported again;
nothing is done twice (the side-effect ledger).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import fits_samples as fs
import psycopg
import pytest
from PIL import Image
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client, WorkflowExecutionStatus

from support import WorkerProcess, poll_until
from unembargo.adapters import fits_db
from unembargo.adapters.fits_start import file_input, start_file
from unembargo.adapters.s3 import connect as s3_connect
from unembargo.client.fits import requeue, schedule_requeue, select_files, start_watch, status
from unembargo.devstack import postgres
from unembargo.models import fits_flow as ff
from unembargo.models.fits import (
    FitsCalibration,
    FitsDiskFile,
    FitsFile,
    FitsHeader,
    FitsPreview,
    FitsSeen,
    FitsSettings,
)
from unembargo.models.locations import DataLocation, LocationType, StorageType
from unembargo.models.settings import Settings
from unembargo.models.tables import Effect, connect, upsert_location

CORRUPT = "N20251231S0099.fits"


def _locations(settings: Settings, root: Path, tag: str, mirror: bool = True) -> list[DataLocation]:
    """DHS and dataflow disks, an archive bucket (created) and a mirror bucket (not yet)."""
    site, short = f"Gemini North {tag}", f"gn{tag}"
    s3_connect(settings.s3_endpoint_url).create_bucket(Bucket=f"fits-archive-{tag}")
    rows = [
        DataLocation(name=f"dhs-{tag}", site=site, type=LocationType.SOURCE, storage=StorageType.DISK,
                     path=str(root / "dhs")),
        DataLocation(name=f"dataflow-{tag}", site=site, type=LocationType.BUFFER, storage=StorageType.DISK,
                     path=str(root / "dataflow")),
        DataLocation(name=f"archive-{tag}", site=site, type=LocationType.LONG_TERM_ARCHIVE,
                     storage=StorageType.S3, endpoint=settings.s3_endpoint_url, bucket=f"fits-archive-{tag}"),
        DataLocation(name=f"mirror-{tag}", site=site, type=LocationType.LONG_TERM_ARCHIVE,
                     storage=StorageType.S3, endpoint=settings.s3_endpoint_url, bucket=f"fits-mirror-{tag}"),
    ][: 4 if mirror else 3]  # fmt: skip
    for row in rows[:2]:
        Path(row.path or "").mkdir(parents=True, exist_ok=True)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for row in rows:
            upsert_location(session, row, short_name=short)
    return rows


@pytest.fixture(scope="module")
def world(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Four locations of their own (DHS and dataflow disks, archive and mirror buckets), the
    archive's own database, the FITS settings naming them, and a worker serving them."""
    tag = uuid.uuid4().hex[:6]
    root = tmp_path_factory.mktemp("fits")
    rows = _locations(settings, root, tag)
    # The archive's own database: a PostgreSQL database of its own (foreign keys enforced).
    admin, archive_db = postgres.url(settings), f"unembargo_fits_archive_{tag}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{archive_db}"')
    env = {
        "UNEMBARGO_FITS_DHS": rows[0].name,
        "UNEMBARGO_FITS_DATAFLOW": rows[1].name,
        "UNEMBARGO_FITS_DESTINATIONS": f'["{rows[2].name}", "{rows[3].name}"]',
        "UNEMBARGO_FITS_ARCHIVE": rows[2].name,
        "UNEMBARGO_FITS_ARCHIVE_DATABASE_URL": admin.rsplit("/", 1)[0] + f"/{archive_db}",
        "UNEMBARGO_FITS_POLL_S": "1",
        "UNEMBARGO_FITS_MIN_AGE_S": "2",
        "UNEMBARGO_FITS_BACKOFF_INITIAL_S": "1",
        "UNEMBARGO_FITS_BACKOFF_MAX_S": "2",
        "UNEMBARGO_FITS_HEARTBEAT_S": "5",
    }
    os.environ.update(env)
    found = {
        "rows": rows, "root": root, "s3": s3_connect(settings.s3_endpoint_url), "env": env,
        "engine": connect(settings.database_url.get_secret_value()), "fits": FitsSettings(),
        "archive_engine": connect(env["UNEMBARGO_FITS_ARCHIVE_DATABASE_URL"]),
        "archive_bucket": f"fits-archive-{tag}", "mirror_bucket": f"fits-mirror-{tag}",
        "worker": WorkerProcess(settings, [r.name for r in rows], env=env),
    }  # fmt: skip
    try:
        yield found
    finally:
        found["worker"].stop()
        found["archive_engine"].dispose()
        for key in env:
            os.environ.pop(key, None)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{archive_db}" WITH (FORCE)')


def _ledger(engine: object, names: set[str]) -> Counter[tuple[str, str, str]]:
    """Side effects per (file, step, action)."""
    with Session(engine) as session:  # type: ignore[arg-type]
        rows = session.exec(select(Effect).where(Effect.obs_id.in_(names))).all()  # type: ignore[attr-defined]
    return Counter((r.obs_id, r.step, r.action) for r in rows)


def _versions(engines: list[Engine], name: str) -> int:
    """Diskfiles of ``name`` in these databases (every version at every location)."""
    count = 0
    for engine in engines:
        with Session(engine) as session:
            count += len(session.exec(select(FitsDiskFile).where(FitsDiskFile.path == name)).all())
    return count


def _rows_at(engine: Engine, location: str) -> dict[str, set[str]]:
    """The names with a diskfile, header, preview or calibration row at ``location``."""
    disk = col(FitsFile.id) == col(FitsDiskFile.file_id)
    queries = {
        "diskfile": select(FitsFile.name).join(FitsDiskFile, disk).where(FitsDiskFile.location == location),
        "header": select(FitsFile.name)
        .join(FitsDiskFile, disk)
        .join(FitsHeader, col(FitsHeader.diskfile_id) == col(FitsDiskFile.id))
        .where(FitsDiskFile.location == location),
        "preview": select(FitsFile.name)
        .join(FitsPreview, col(FitsFile.id) == col(FitsPreview.file_id))
        .where(FitsPreview.location == location),
        "calibration": select(FitsFile.name)
        .join(FitsCalibration, col(FitsFile.id) == col(FitsCalibration.science_file_id))
        .where(FitsCalibration.location == location),
    }
    with Session(engine) as session:
        return {table: set(session.exec(query).all()) for table, query in queries.items()}


async def _states(client: Client, names: list[str]) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            desc = await client.get_workflow_handle(ff.fits_workflow_id(name)).describe()
        except Exception:
            found[name] = "absent"
            continue
        found[name] = desc.status.name.lower() if desc.status else "?"
    return found


async def test_fits_night_from_dhs_to_archive(settings: Settings, client: Client, world: dict) -> None:
    rows, root, s3, engine, fits = world["rows"], world["root"], world["s3"], world["engine"], world["fits"]
    archive_engine = world["archive_engine"]
    dhs, dataflow, archive, mirror = (r.name for r in rows)
    samples = fs.night()
    names = [s.name for s in samples]
    for i, s in enumerate(samples):
        fs.age(fs.write(root / "dhs" / s.name, s, seed=i), 60)
    (root / "dhs" / CORRUPT).write_bytes(b"SIMPLE  =                    T" + b"\0" * 3000)
    fs.age(root / "dhs" / CORRUPT, 60)
    (root / "dhs" / ".N20251231S0098.fits.part").write_bytes(b"being written")
    (root / "dhs" / "obslog.txt").write_text("operator notes")

    with Session(engine) as session:
        assert await start_watch(client, settings, fits, session) == "started"

    def archived_and_previewed() -> bool:
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=world["archive_bucket"]).get("Contents", [])}
        return all(n in keys and ff.preview_key(n) in keys for n in names)

    # The archive's chain completes while the mirror is down ...
    await poll_until(archived_and_previewed, 60, "every file archived and previewed")
    with Session(engine) as session:
        during = await status(client, fits, session)
    assert mirror in during.destinations, during.destinations
    assert all(state == "running" for state in (await _states(client, names)).values())
    assert during.steps["export"].waiting, during.steps["export"]
    # ... and the mirror's exports go through once it is there.
    s3.create_bucket(Bucket=world["mirror_bucket"])

    async def all_completed() -> bool:
        return set((await _states(client, names)).values()) == {"completed"}

    await poll_until(all_completed, 60, "every file's workflow completed")

    data = {n: (root / "dhs" / n).read_bytes() for n in names}
    # The summit's rows are in the main database, the archive's in its own, none in the other.
    science = {"N20251231S0003.fits", "N20251231S0007.fits"}  # S0004 (1x1 g) matches nothing
    everything = {"diskfile": set(names), "header": set(names), "preview": set(names), "calibration": science}
    assert _rows_at(archive_engine, archive) == everything
    assert _rows_at(engine, archive) == dict.fromkeys(everything, set())
    assert _rows_at(engine, dataflow) == {**dict.fromkeys(everything, set()), "diskfile": set(names),
                                          "header": set(names)}  # fmt: skip
    assert _rows_at(archive_engine, dataflow)["diskfile"] == set()
    with Session(engine) as session, Session(archive_engine) as at_archive:
        for n in names:
            md5 = hashlib.md5(data[n]).hexdigest()
            assert (root / "dataflow" / n).read_bytes() == data[n]
            for bucket in (world["archive_bucket"], world["mirror_bucket"]):
                head = s3.head_object(Bucket=bucket, Key=n)
                assert (head["Metadata"]["md5"], head["ContentLength"]) == (md5, len(data[n]))
            for db, loc in ((session, dataflow), (at_archive, archive)):
                disk = fits_db.current(db, n, loc)
                assert disk is not None and disk.md5 == md5 and disk.fits_ok
    with Session(archive_engine) as session:
        header = fits_db.header_of(session, fits_db.current(session, "N20251231S0003.fits", archive))
        assert header is not None
        assert (header.instrument, header.observation_type, header.filter, header.binning) == (
            "GMOS-N", "OBJECT", "r_G0303", "2x2",
        )  # fmt: skip
        assert fits_db.associations(session, "N20251231S0003.fits", archive) == {
            "BIAS": "N20251231S0001.fits", "FLAT": "N20251231S0002.fits"}  # fmt: skip
        assert fits_db.associations(session, "N20251231S0007.fits", archive) == {
            "DARK": "N20251231S0005.fits", "FLAT": "N20251231S0006.fits"}  # fmt: skip
    with Session(engine) as session:
        seen = session.get(FitsSeen, (dhs, CORRUPT))
        assert seen is not None and seen.state == ff.INVALID and seen.problem
    png = s3.get_object(Bucket=world["archive_bucket"], Key=ff.preview_key(names[2]))["Body"].read()
    assert Image.open(io.BytesIO(png)).size == (fs.SIDE, fs.SIDE)
    assert not (root / "dataflow" / CORRUPT).exists()
    with Session(engine) as session:
        after = await status(client, fits, session)
    assert after.invalid.keys() == {CORRUPT} and after.destinations == {}
    assert after.steps["dhs"].waiting == []

    # The worker restarts; meanwhile two files arrive and one is touched: the poller catches
    # up with the new ones and does not copy the touched one again.
    world["worker"].stop()
    late = [dataclasses.replace(samples[6], name=f"N20251231S00{i}.fits") for i in (10, 11)]
    for i, s in enumerate(late):
        fs.age(fs.write(root / "dhs" / s.name, s, seed=10 + i), 60)
    fs.age(root / "dhs" / names[0], 30)
    world["worker"] = WorkerProcess(settings, [r.name for r in rows], env=world["env"])

    async def late_completed() -> bool:
        return set((await _states(client, [s.name for s in late])).values()) == {"completed"}

    await poll_until(late_completed, 60, "the files written while the worker was down completed")
    names += [s.name for s in late]

    # Rewritten on the dataflow disk: nothing happens until a requeue, which re-ingests it.
    target = root / "dataflow" / names[2]
    fs.write(target, fs.Sample(names[2], "GMOS-N", "OBJECT", "i_G0302", 120.0), seed=7)
    with Session(engine) as session:
        picked = select_files(session, fits, file_re=r"S0003\.fits$")
        assert picked == [names[2]]
        await requeue(client, settings, fits, session, picked)
    handle = client.get_workflow_handle(ff.fits_workflow_id(names[2]))

    async def reingested() -> bool:
        if (await handle.describe()).status.name.lower() != "completed":  # type: ignore[union-attr]
            return False
        return _versions([engine, archive_engine], names[2]) == 4

    await poll_until(reingested, 30, "the requeued file re-ingested at dataflow and archive")
    new_md5 = hashlib.md5(target.read_bytes()).hexdigest()
    assert s3.head_object(Bucket=world["archive_bucket"], Key=names[2])["Metadata"]["md5"] == new_md5

    # The nightly cron line as a Temporal Schedule: its run re-checks the last day's files
    # (here narrowed to one, rewritten with its lastmod kept: only --force-md5 sees it).
    other = root / "dataflow" / names[6]
    mtime = other.stat().st_mtime
    fs.write(other, dataclasses.replace(samples[6], exptime=60.0), seed=8)
    os.utime(other, (mtime, mtime))
    with Session(engine) as session:
        made = await schedule_requeue(
            client,
            settings,
            fits,
            session,
            timedelta(hours=24),
            days=1,
            force_md5=True,
            file_re=r"S0007\.fits$",
        )
    assert made == "created"
    scheduled = client.get_schedule_handle(ff.requeue_schedule_id(dataflow))
    await scheduled.trigger()

    async def rechecked() -> bool:
        if _versions([engine, archive_engine], names[6]) < 4:
            return False
        return (await _states(client, [names[6]]))[names[6]] == "completed"

    await poll_until(rechecked, 30, "the scheduled requeue re-ingesting the rewritten file")
    await scheduled.delete()

    # The corrupt file put on the dataflow disk by hand and requeued by path: ingested with
    # its errors, never exported, and `fits status` names it failed at ingest.
    (root / "dataflow" / CORRUPT).write_bytes((root / "dhs" / CORRUPT).read_bytes())
    with Session(engine) as session:
        assert select_files(session, fits, path=CORRUPT) == [CORRUPT]
        await requeue(client, settings, fits, session, [CORRUPT])

    async def corrupt_failed() -> bool:
        return (await _states(client, [CORRUPT]))[CORRUPT] == "failed"

    await poll_until(corrupt_failed, 30, "the corrupt file's run to fail")
    with Session(engine) as session:
        shown = await status(client, fits, session)
        disk = fits_db.current(session, CORRUPT, dataflow)
    [failure] = [f for f in shown.steps["ingest"].failed if f.name == CORRUPT]
    assert "InvalidFits" in failure.error and CORRUPT in failure.error
    assert disk is not None and not disk.fits_ok and disk.fits_errors

    # Nothing was done twice: one copy per file, one upload per destination (two for the
    # rewritten file), one preview per version.
    ledger = _ledger(engine, set(names) | {CORRUPT})
    for n in names:
        again = 2 if n in (names[2], names[6]) else 1
        assert ledger[(n, "fits_copy", "copy")] == 1
        assert ledger[(n, "fits_ingest", "ingested")] == 1
        assert ledger[(n, "fits_ingest", "reingested")] == again - 1
        assert ledger[(n, "fits_export", f"upload:{archive}")] == again
        assert ledger[(n, "fits_export", f"upload:{mirror}")] == again
        assert ledger[(n, "fits_archive_ingest", "ingested")] == 1
        assert ledger[(n, "fits_preview", "preview")] == again
    assert {k for k in ledger if k[0] == CORRUPT} == {(CORRUPT, "fits_ingest", "ingested")}
    assert world["worker"].alive()


# Every step, just after its side effect (done, not yet reported), and the copy before it.
POINTS = ["fits_copy:acting", "fits_copy:acted", "fits_ingest:acted", "fits_export:acted",
          "fits_archive_ingest:acted", "fits_preview:acted", "fits_calibration:acted"]  # fmt: skip


async def test_worker_killed_at_every_step_does_each_thing_once(
    settings: Settings, client: Client, tmp_path: Path
) -> None:
    """Crash safety: two workers armed to SIGKILL themselves at each step's points serve one
    file; after every kill the survivor takes over (heartbeat timeout) and the killed one is
    replaced. The file ends archived, previewed and associated with every side effect once."""
    tag = uuid.uuid4().hex[:6]
    rows = _locations(settings, tmp_path, tag, mirror=False)
    # A name of its own: the module's other test has the night's names in flight.
    name = f"N20251231S{uuid.uuid4().int % 10**6:06d}.fits"
    fs.write(tmp_path / "dhs" / name, dataclasses.replace(fs.night()[2], name=name))
    engine = connect(settings.database_url.get_secret_value())
    with Session(engine) as session:
        inp = file_input(session, name, rows[0].name, rows[1].name, [rows[2].name], rows[2].name,
                         policy=ff.FitsPolicy(heartbeat_s=3))  # fmt: skip
    await start_file(client, settings.workflow_task_queue, inp)
    handle = client.get_workflow_handle(ff.fits_workflow_id(inp.name))
    env = {"UNEMBARGO_CRASH_MARKERS": str(tmp_path), "UNEMBARGO_CRASH_AT": ",".join(POINTS)}
    workers: list[WorkerProcess] = []
    kills = 0

    async def closed() -> bool:
        return (await handle.describe()).status != WorkflowExecutionStatus.RUNNING

    async def ended() -> bool:
        return any(not w.alive() for w in workers) or await closed()

    try:
        while not await closed():
            for dead in [w for w in workers if not w.alive()]:
                workers.remove(dead)
                assert dead.proc.returncode == -signal.SIGKILL, dead.output()[-3000:]
                kills += 1
            assert kills <= len(POINTS)
            workers += [WorkerProcess(settings, [r.name for r in rows], env) for _ in range(2 - len(workers))]
            await poll_until(ended, timeout=60, what="a kill or the end of the workflow")
    finally:
        for w in workers:
            w.stop()
    kills += sum(1 for w in workers if w.proc.returncode == -signal.SIGKILL)
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    assert sorted(
        p.name for p in tmp_path.iterdir() if "-" in p.name and p.name.startswith("fits_")
    ) == sorted(p.replace(":", "-") for p in POINTS)
    assert kills == len(POINTS)
    ledger = _ledger(engine, {inp.name})
    assert ledger == Counter(
        {(inp.name, "fits_copy", "copy"): 1, (inp.name, "fits_ingest", "ingested"): 1,
         (inp.name, "fits_export", f"upload:{rows[2].name}"): 1,
         (inp.name, "fits_archive_ingest", "ingested"): 1, (inp.name, "fits_preview", "preview"): 1}
    ), ledger  # fmt: skip
    state = await handle.result()
    assert state["preview"] == ff.preview_key(inp.name) and state["calibration"] == {  # type: ignore[index]
        "BIAS": None, "FLAT": None, "DARK": None}  # fmt: skip
