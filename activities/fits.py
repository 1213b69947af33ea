"""The FITS flow's activities: the DHS and dataflow disks, the destinations, the databases
(the archive's rows in the archive's own database when it has one: adapters/fits_db.FitsDatabases).

Each checks its "done when" first: a copy whose target has the source's md5 and size is
not made again; an ingest whose diskfile is current is a no-op; an export whose
destination reports the file's md5 and size sends nothing; a preview made from the
current version and an association already cached are kept. Side effects are written
to the ledger (``Effect``, keyed by file name) just before they happen, so a crash test
can count them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from unembargo.activities.context import Resources, checkpoint, heartbeating
from unembargo.adapters import fits_db, fits_preview, fits_watch
from unembargo.adapters.fits_files import (
    DestinationUnavailable,
    DiskStore,
    S3Store,
    Store,
    copy_with_md5,
    inside,
    md5_of,
)
from unembargo.adapters.fits_start import file_input, start_file, start_files
from unembargo.models.fits import FitsSettings
from unembargo.models.fits_flow import (
    DATAFLOW,
    DHS,
    OPERATION_OF_ROLE,
    REQUEUE_ACTIVITY,
    SCAN_ACTIVITY,
    STEPS,
    UNCHANGED,
    CalibrationInput,
    CalibrationReceipt,
    CopyInput,
    CopyReceipt,
    ExportInput,
    ExportReceipt,
    IngestInput,
    IngestReceipt,
    PreviewInput,
    PreviewReceipt,
    RequeueInput,
    RequeueReceipt,
    ScanInput,
    ScanReceipt,
    Step,
    preview_key,
)
from unembargo.models.locations import DataLocation, StorageType, get_location
from unembargo.models.tables import Effect

# Names of newly invalid files a scan's receipt carries (history is visible: keep it short).
_NAMED = 5


class FitsActivities:
    """One per worker; the Temporal client starts file workflows from the scan."""

    def __init__(self, resources: Resources, client: Client, settings: FitsSettings | None = None) -> None:
        self.resources = resources
        self.client = client
        self.settings = settings or FitsSettings()
        url = self.settings.archive_database_url
        # The archive's rows go to its own database when it has one (models/fits.FitsSettings).
        self.databases = fits_db.FitsDatabases(
            lambda: resources.engine, self.settings.archive, url.get_secret_value() if url else None
        )
        self._s3: dict[str | None, Any] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def _session(self) -> Session:
        """The main database: locations, the ledger, the watch's memory, destinations' health."""
        return Session(self.resources.engine)

    def _db(self, location: str) -> Session:
        """The database holding ``location``'s files, headers, previews and calibrations."""
        return self.databases.session(location)

    def _location(self, name: str) -> DataLocation:
        with self._session() as session:
            return get_location(session, name)

    def _root(self, name: str) -> Path:
        loc = self._location(name)
        if loc.storage != StorageType.DISK or not loc.path:
            raise ValueError(f"location {name!r} is {loc.storage}, the FITS flow needs a disk here")
        root = Path(loc.path)
        if not root.is_dir():
            raise FileNotFoundError(f"{name}: {root} is missing (not mounted?); will retry")
        return root

    def _store(self, name: str) -> Store:
        loc = self._location(name)
        if loc.storage == StorageType.S3:
            with self._lock:
                if loc.endpoint not in self._s3:
                    from unembargo.adapters.s3 import connect

                    self._s3[loc.endpoint] = connect(loc.endpoint)
            return S3Store(name, self._s3[loc.endpoint], loc.bucket or "", loc.prefix)
        return DiskStore(name, Path(loc.path or ""))

    def _record(self, name: str, step: str, action: str) -> None:
        with self._session() as session:
            session.add(Effect(obs_id=name, step=step, action=action))
            session.commit()

    # ------------------------------------------------------------------ the watcher

    @activity.defn(name=SCAN_ACTIVITY)
    async def scan_dhs(self, inp: ScanInput) -> ScanReceipt:
        """One scan of the DHS folder: start the workflow of each settled, valid new file."""
        found = await asyncio.to_thread(self._scan, inp)
        started = 0
        for ready in found.ready:
            run = await asyncio.to_thread(self._file_input, inp, ready.name)
            await start_file(self.client, inp.workflow_queue, run)
            await asyncio.to_thread(self._mark, inp.dhs, ready)
            started += 1
            activity.heartbeat(started)
        invalid = found.invalid or []
        return ScanReceipt(found.seen, started, found.waiting, len(invalid), invalid[:_NAMED])

    def _scan(self, inp: ScanInput) -> fits_watch.ScanResult:
        root = self._root(inp.dhs)
        with self._session() as session, heartbeating():
            return fits_watch.scan(session, inp.dhs, root, inp.min_age_s, inp.invalid_after)

    def _file_input(self, inp: ScanInput, name: str) -> Any:
        with self._session() as session:
            return file_input(
                session, name, inp.dhs, inp.dataflow, inp.destinations, inp.archive,
                policy=self.settings.policy(),
            )  # fmt: skip

    def _mark(self, location: str, ready: fits_watch.Ready) -> None:
        with self._session() as session:
            fits_watch.mark_started(session, location, ready)

    @activity.defn(name=REQUEUE_ACTIVITY)
    async def fits_requeue(self, inp: RequeueInput) -> RequeueReceipt:
        """Select the files to run again and start (or signal) each one's workflow, from its ingest."""

        def inputs() -> list[Any]:
            with self._session() as session:
                root = self._root(inp.dataflow)
                names = fits_db.requeue_names(session, inp.dataflow, root, inp.file_re, inp.days, inp.path)
                return [
                    file_input(session, n, None, inp.dataflow, inp.destinations, inp.archive,
                               inp.force, inp.force_md5, inp.policy)
                    for n in names
                ]  # fmt: skip

        runs = await asyncio.to_thread(inputs)
        activity.heartbeat(len(runs))
        started = await start_files(self.client, inp.workflow_queue, runs)
        return RequeueReceipt(len(runs), len(started))

    # ------------------------------------------------------------------ the dataflow disk

    @activity.defn(name=STEPS[Step.COPY].activity)
    def fits_copy(self, inp: CopyInput) -> CopyReceipt:
        """DHS -> dataflow, with md5; nothing is copied when the dataflow has these bytes."""
        src = inside(self._root(inp.dhs), inp.name)
        dst = inside(self._root(inp.dataflow), inp.name)
        with heartbeating():
            md5 = md5_of(src)
            size = src.stat().st_size
            if dst.is_file() and dst.stat().st_size == size and md5_of(dst) == md5:
                return CopyReceipt(md5, size, copied=False)
            checkpoint("fits_copy", "acting")
            self._record(inp.name, "fits_copy", "copy")
            copied, copied_size = copy_with_md5(src, dst)
            checkpoint("fits_copy", "acted")
        if (copied, copied_size) != (md5, size):
            # Rewritten while being copied: the watcher sees the new version and starts again.
            raise RuntimeError(f"{inp.name} changed while being copied; will copy again")
        return CopyReceipt(md5, size, copied=True)

    @activity.defn(name=STEPS[Step.INGEST].activity)
    def fits_ingest(self, inp: IngestInput) -> IngestReceipt:
        path = inside(self._root(inp.location), inp.name)

        def before(outcome: str) -> None:
            checkpoint("fits_ingest", "acting")
            self._record(inp.name, "fits_ingest", outcome)

        with self._db(inp.location) as session, heartbeating():
            got = fits_db.ingest(session, inp.name, inp.location, path, inp.force, inp.force_md5, before)
        checkpoint("fits_ingest", "acted")
        return got

    # ------------------------------------------------------------------ destinations

    @activity.defn(name=STEPS[Step.EXPORT].activity)
    def fits_export(self, inp: ExportInput) -> ExportReceipt:
        """Ask the destination for its md5 (equal: done), send, and check md5 and size after."""
        now = datetime.now(UTC)
        with self._session() as session:
            waiting = fits_db.backed_off(session, inp.destination, now)
            if waiting is not None:
                raise _unavailable(
                    f"{inp.destination} is backed off after {waiting.failures} failure(s): "
                    f"{waiting.last_error}",
                    fits_db.remaining(waiting, now),
                )
        src = inside(self._root(inp.source), inp.name)
        dest = self._store(inp.destination)
        try:
            with heartbeating():
                held = dest.stat(inp.name)
                if held == (inp.md5, inp.size):
                    outcome = "same"
                else:
                    checkpoint("fits_export", "acting")
                    self._record(inp.name, "fits_export", f"upload:{inp.destination}")
                    dest.put(inp.name, src, inp.md5)
                    checkpoint("fits_export", "acted")
                    after = dest.stat(inp.name)
                    if after != (inp.md5, inp.size):
                        raise RuntimeError(
                            f"{inp.destination} holds {inp.name} as {after} after the upload, "
                            f"not ({inp.md5}, {inp.size}); sending again"
                        )
                    outcome = "uploaded"
        except DestinationUnavailable as err:
            s = self.settings
            with self._session() as session:
                until = fits_db.destination_failed(
                    session, inp.destination, str(err), now, s.backoff_initial_s, s.backoff_max_s
                )
            raise _unavailable(str(err), until - now) from None
        with self._session() as session:
            fits_db.destination_ok(session, inp.destination, datetime.now(UTC))
        return ExportReceipt(inp.destination, outcome)

    # ------------------------------------------------------------------ the archive

    @activity.defn(name=STEPS[Step.ARCHIVE_INGEST].activity)
    def fits_archive_ingest(self, inp: IngestInput) -> IngestReceipt:
        """Ingest the archive's copy; its md5 (not a download's lastmod) says if it changed."""
        store = self._store(inp.location)
        with heartbeating():
            held = store.stat(inp.name)
            if held is None:
                raise FileNotFoundError(f"{inp.location} does not hold {inp.name} (yet); will retry")
            with self._db(inp.location) as session:
                now = fits_db.current(session, inp.name, inp.location)
                if now is not None and now.md5 == held[0] and not inp.force:
                    header = fits_db.header_of(session, now)
                    return IngestReceipt(
                        UNCHANGED, now.md5, now.size, now.fits_ok,
                        header.instrument if header else None, header.observation_type if header else None,
                    )  # fmt: skip

            def before(outcome: str) -> None:
                checkpoint("fits_archive_ingest", "acting")
                self._record(inp.name, "fits_archive_ingest", outcome)

            with store.local(inp.name) as path, self._db(inp.location) as session:
                got = fits_db.ingest(session, inp.name, inp.location, path, force=True, before=before)
            checkpoint("fits_archive_ingest", "acted")
        return got

    @activity.defn(name=STEPS[Step.PREVIEW].activity)
    def fits_preview(self, inp: PreviewInput) -> PreviewReceipt:
        key = preview_key(inp.name)
        with self._db(inp.location) as session:
            now = fits_db.current(session, inp.name, inp.location)
            if now is None:
                raise FileNotFoundError(f"{inp.name} is not ingested at {inp.location} yet; will retry")
            done = fits_db.preview_done(session, inp.name, inp.location, now.md5)
            if done is not None:
                return PreviewReceipt(done.key, False, done.width, done.height)
            md5 = now.md5
        store = self._store(inp.location)
        with heartbeating(), store.local(inp.name) as path:
            png, width, height = fits_preview.render(path)
        checkpoint("fits_preview", "acting")
        self._record(inp.name, "fits_preview", "preview")
        if isinstance(store, S3Store):
            store.put_bytes(key, png, "image/png")
        else:
            target = inside(Path(self._location(inp.location).path or ""), key)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            tmp.write_bytes(png)
            tmp.replace(target)
        with self._db(inp.location) as session:
            fits_db.record_preview(session, inp.name, inp.location, key, md5, (width, height))
        checkpoint("fits_preview", "acted")
        return PreviewReceipt(key, True, width, height)

    @activity.defn(name=STEPS[Step.CALIBRATION].activity)
    def fits_calibration(self, inp: CalibrationInput) -> CalibrationReceipt:
        with self._db(inp.location) as session:
            found = fits_db.associate(session, inp.name, inp.location, inp.window_days)
        checkpoint("fits_calibration", "acted")
        return found


def _unavailable(message: str, wait: timedelta) -> ApplicationError:
    """A retryable failure whose next attempt waits for the destination's backoff."""
    return ApplicationError(
        message, type="DestinationUnavailable", next_retry_delay=max(wait, timedelta(seconds=1))
    )


def fits_activities(impl: FitsActivities) -> dict[str, list[Callable[..., Any]]]:
    """Operation -> the FITS activities its queues run (models/fits_flow.OPERATION_OF_ROLE)."""
    by_role: dict[str, list[Callable[..., Any]]] = {DHS: [impl.scan_dhs], DATAFLOW: [impl.fits_requeue]}
    for spec in STEPS.values():
        by_role.setdefault(spec.location, []).append(getattr(impl, spec.activity))
    return {OPERATION_OF_ROLE[role]: fns for role, fns in by_role.items()}
