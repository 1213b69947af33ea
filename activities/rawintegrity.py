"""The rawintegrity flow's activities: the online storage, the tape front end, Rucio, the batcher.

Each checks its "done when" first: a put finds the copy tape already holds, a bad tape copy is
removed only if it is still the bad one, a registration adds only replicas Rucio lacks, and the
online copy is removed only after the tape copy's checksum and its Rucio replica are checked
again, at that moment. Every side effect is written to the ledger just before it is carried out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import metrics
from sqlmodel import Session
from temporalio import activity
from temporalio.client import Client

from unembargo.activities.context import Resources, checkpoint, heartbeating
from unembargo.adapters import tape_replicas
from unembargo.adapters.online import OnlineStorage
from unembargo.adapters.tape import LocalTape
from unembargo.engine.telemetry import new_traces
from unembargo.models.exposure import Exposure
from unembargo.models.locations import NoLocation, get_location
from unembargo.models.rawintegrity import (
    BATCH_WORKFLOW,
    REGISTER_SIGNAL,
    STEPS,
    BatchInput,
    BatchPolicy,
    MissingOnline,
    PutInput,
    PutReceipt,
    RegisterBatchInput,
    RegisterBatchReceipt,
    RemovalUnsafe,
    RemovedReceipt,
    RemoveOnlineInput,
    RemoveTapeInput,
    RequestInput,
    RequestReceipt,
    SourceChanged,
    Step,
    TapeInput,
    TapeReceipt,
    batch_workflow_id,
)
from unembargo.models.settings import Settings

# The flow's metrics (OpenTelemetry; exported by whatever meter provider the process installs).
_meter = metrics.get_meter("unembargo.rawintegrity")
WAITING_FILES = _meter.create_up_down_counter(
    "rawintegrity.waiting.files",
    unit="{file}",
    description="Files put to tape whose online copy is not removed yet",
)
WAITING_BYTES = _meter.create_up_down_counter(
    "rawintegrity.waiting.bytes", unit="By", description="Bytes of those files"
)
MIGRATED = _meter.create_counter(
    "rawintegrity.migrated", unit="{file}", description="Files newly found on tape"
)
MIGRATION_TIME = _meter.create_histogram(
    "rawintegrity.migration.duration", unit="s", description="Seconds from the put to the migration"
)
BAD_CHECKSUMS = _meter.create_counter(
    "rawintegrity.bad_checksums", unit="{file}", description="Tape copies removed for a wrong adler32"
)
REGISTERED = _meter.create_counter(
    "rawintegrity.registered", unit="{file}", description="Tape replicas added to Rucio"
)
REMOVED = _meter.create_counter(
    "rawintegrity.removed_online", unit="{file}", description="Online copies removed"
)
ERRORS = _meter.create_counter(
    "rawintegrity.errors", unit="{error}", description="Failed activity attempts, by stage"
)


def export_metrics(settings: Settings) -> bool:
    """Send this process's metrics over OTLP/HTTP to ``otel_endpoint`` (every 30 s), once per
    process; False (metrics stay in-process, no-ops) when no endpoint is set or a provider exists."""
    from opentelemetry.sdk.metrics import MeterProvider

    if not settings.otel_endpoint or isinstance(metrics.get_meter_provider(), MeterProvider):
        return False
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    endpoint = settings.otel_endpoint.rstrip("/").removesuffix("/v1/traces")
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), 30_000)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return True


def _lfn_unit(lfn: str) -> Exposure:
    """The ledger keys rows by a unit's name; a raw file's is its LFN."""
    return Exposure("rawintegrity", 0, lfn, 0)


class RawIntegrityActivities:
    """One instance per worker; the Temporal client signals the batcher."""

    def __init__(self, resources: Resources, client: Client) -> None:
        self.resources = resources
        self.client = client
        export_metrics(resources.settings)

    def _root(self, location: str) -> Path:
        """The mount point of a DISK or TAPE location, from the location table."""
        with Session(self.resources.engine) as session:
            loc = get_location(session, location)
        if loc.path is None:
            raise NoLocation(
                f"location {location!r} has no path; the rawintegrity flow needs a disk or tape path"
            )
        return Path(loc.path)

    def online(self, location: str) -> OnlineStorage:
        return OnlineStorage(self._root(location))

    def tape(self, location: str) -> LocalTape:
        return LocalTape(self._root(location))

    def _record(self, lfn: str, step: Step, action: str) -> None:
        self.resources.record(_lfn_unit(lfn), step.value, action)

    @activity.defn(name=STEPS[Step.PUT].activity)
    def put_to_tape(self, inp: PutInput) -> PutReceipt:
        """Done when the tape location holds a copy (cache or tape); else copy it with its adler32."""
        with _counted(Step.PUT), heartbeating():
            lfn, online, tape = inp.lfn, self.online(inp.online), self.tape(inp.tape)
            if not online.exists(lfn):
                raise MissingOnline(
                    f"{lfn} is not in the online storage {online.root} and no verified tape copy exists"
                )
            size, adler = online.checksum(lfn)
            if tape.is_migrated(lfn) or tape.in_cache(lfn) == (size, adler):
                # On tape already (its checksum is compared by the workflow), or waiting in the cache.
                return PutReceipt(size, adler, copied=False)
            checkpoint("put_to_tape", "acting")
            self._record(lfn, Step.PUT, "copy")
            written = tape.put(lfn, online.path(lfn))
            if written != (size, adler):
                raise SourceChanged(
                    f"{lfn} changed while it was copied ({size} bytes {adler}, then {written})"
                )
            checkpoint("put_to_tape", "acted")
            if inp.attempt == 1:
                WAITING_FILES.add(1)
                WAITING_BYTES.add(size)
            return PutReceipt(size, adler, copied=True)

    @activity.defn(name=STEPS[Step.TAPE].activity)
    def tape_status(self, inp: TapeInput) -> TapeReceipt:
        """Is it migrated, and what checksum does tape hold? (Changes nothing.)"""
        with _counted(Step.TAPE), heartbeating():
            copy = self.tape(inp.tape).tape_checksum(inp.lfn)
            if copy is None:
                return TapeReceipt(migrated=False)
            MIGRATED.add(1)
            if copy.migration_s is not None:
                MIGRATION_TIME.record(copy.migration_s)
            return TapeReceipt(True, copy.adler32, copy.size, copy.migration_s)

    @activity.defn(name=STEPS[Step.REMOVE_TAPE].activity)
    def remove_tape_copy(self, inp: RemoveTapeInput) -> RemovedReceipt:
        """Remove the tape copy only if it is still the bad one (a good copy is never touched)."""
        with _counted(Step.REMOVE_TAPE):
            tape = self.tape(inp.tape)
            copy = tape.tape_checksum(inp.lfn)
            if copy is None or copy.adler32 != inp.bad_adler32:
                return RemovedReceipt(removed=False)
            self._record(inp.lfn, Step.REMOVE_TAPE, "remove")
            tape.remove(inp.lfn)
            BAD_CHECKSUMS.add(1)
            return RemovedReceipt(removed=True)

    @activity.defn(name=STEPS[Step.REQUEST].activity)
    async def request_registration(self, inp: RequestInput) -> RequestReceipt:
        """Signal the batcher of the RSE, starting it if it is not running (signal-with-start)."""
        with _counted(Step.REQUEST), new_traces():
            wid = batch_workflow_id(inp.rse)
            await self.client.start_workflow(
                BATCH_WORKFLOW,
                BatchInput(
                    inp.rse, inp.queue, BatchPolicy(batch_size=inp.batch_size, heartbeat_s=inp.heartbeat_s)
                ),
                id=wid,
                task_queue=inp.workflow_queue,
                start_signal=REGISTER_SIGNAL,
                start_signal_args=[inp.request],
            )
            return RequestReceipt(wid)

    @activity.defn(name=STEPS[Step.REGISTER].activity)
    def register_tape_replicas(self, inp: RegisterBatchInput) -> RegisterBatchReceipt:
        """Add the batch's replicas at the tape RSE that Rucio lacks (one list, one add call)."""
        with _counted(Step.REGISTER), heartbeating():
            scope = self.resources.settings.rucio_scope
            wanted = [tape_replicas.Wanted(r.lfn, r.size, r.adler32) for r in inp.files]

            def before_add(lfns: list[str]) -> None:
                checkpoint("register_tape_replicas", "acting")
                for lfn in lfns:
                    self._record(lfn, Step.REGISTER, "add_replica")

            added, already, conflicts = tape_replicas.register(
                self.resources.rucio(), scope, inp.rse, wanted, before_add
            )
            checkpoint("register_tape_replicas", "acted")
            REGISTERED.add(len(added))
            return RegisterBatchReceipt(added, already, conflicts)

    @activity.defn(name=STEPS[Step.REMOVE_ONLINE].activity)
    def remove_online(self, inp: RemoveOnlineInput) -> RemovedReceipt:
        """Remove the online copy, after checking again that tape and Rucio hold it verified."""
        with _counted(Step.REMOVE_ONLINE), heartbeating():
            lfn, online = inp.lfn, self.online(inp.online)
            if not online.exists(lfn):
                return RemovedReceipt(removed=False)
            copy = self.tape(inp.tape).tape_checksum(lfn)
            if copy is None or (copy.size, copy.adler32) != (inp.size, inp.adler32):
                found = "no tape copy" if copy is None else f"{copy.size} bytes, adler32 {copy.adler32}"
                raise RemovalUnsafe(
                    f"online copy of {lfn} kept: tape holds {found}, "
                    f"not {inp.size} bytes, adler32 {inp.adler32}"
                )
            scope = self.resources.settings.rucio_scope
            if not tape_replicas.is_registered(
                self.resources.rucio(), scope, inp.rse, lfn, inp.size, inp.adler32
            ):
                raise RemovalUnsafe(
                    f"online copy of {lfn} kept: Rucio has no available replica {scope}:{lfn} at {inp.rse} "
                    f"with {inp.size} bytes, adler32 {inp.adler32}"
                )
            now = online.checksum(lfn)
            if now != (inp.size, inp.adler32):
                raise SourceChanged(
                    f"online copy of {lfn} kept: it has {now[0]} bytes, adler32 {now[1]}, not the "
                    f"{inp.size} bytes, adler32 {inp.adler32} put to tape"
                )
            checkpoint("remove_online", "acting")
            self._record(lfn, Step.REMOVE_ONLINE, "remove")
            online.remove(lfn)
            checkpoint("remove_online", "acted")
            WAITING_FILES.add(-1)
            WAITING_BYTES.add(-inp.size)
            REMOVED.add(1)
            return RemovedReceipt(removed=True)


def rawintegrity_activities(impl: RawIntegrityActivities) -> dict[str, list[Callable[..., Any]]]:
    """Operation -> the flow's activities a location serving it runs (from the step table)."""
    found: dict[str, list[Callable[..., Any]]] = {}
    for spec in STEPS.values():
        found.setdefault(spec.location, []).append(getattr(impl, spec.activity))
    return found


@contextmanager
def _counted(step: Step) -> Iterator[None]:
    """Count an attempt that raised under its stage (the ``rawintegrity.errors`` metric)."""
    try:
        yield
    except BaseException as err:
        ERRORS.add(1, {"stage": step.value, "error": type(err).__name__})
        raise
