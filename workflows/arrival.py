"""One durable workflow per arriving exposure: ingest each raw as it lands, then, once
complete, define its visit and start its unembargo workflow when its embargo ends.

Deterministic code only. Each bucket notification is a signal (``object``); a name
already seen is a no-op, so replays and duplicates change nothing, and order does not
matter. Raws are ingested in batches by one activity at a time (the embargo registry
takes one writer best). History stays bounded: past ``history_limit`` events the run
continues as new, carrying the exposure's state (bounded by its folder).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from unembargo.models.arrival import (
        ARRIVAL_WORKFLOW,
        ARRIVING,
        EMBARGOED,
        EXPECTED,
        FAILED,
        INCOMPLETE,
        OBJECT_SIGNAL,
        RAW,
        RESCAN_SIGNAL,
        SEEN_QUERY,
        SIDECAR,
        STARTED,
        STEPS,
        UNREADABLE,
        VISITS,
        ArrivalCarry,
        ArrivalInput,
        ArrivalState,
        EmbargoInput,
        EmbargoReceipt,
        ExpectedReceipt,
        FolderInput,
        FolderReceipt,
        IngestBatchInput,
        IngestBatchReceipt,
        ObjectEvent,
        StartInput,
        StartReceipt,
        Step,
        VisitInput,
        file_kind,
    )
    from unembargo.models.exposure import Exposure
    from unembargo.models.names import SA_DAY_OBS, SA_INSTRUMENT, SA_OBS_ID, SA_STEP

# Items named in a message before "and N more": messages land in history and the UI.
_NAMED = 5


async def _wait(fn: Callable[[], bool], timeout: timedelta | None = None) -> None:
    """Wait until ``fn()`` holds or ``timeout`` passes (a durable timer), whichever is first."""
    try:
        await workflow.wait_condition(fn, timeout=timeout)
    except TimeoutError:
        pass


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:_NAMED])
    return shown + (f" and {len(items) - _NAMED} more" if len(items) > _NAMED else "")


@workflow.defn(name=ARRIVAL_WORKFLOW)
class ArrivalWorkflow:
    @workflow.init
    def __init__(self, inp: ArrivalInput) -> None:
        # The input is known before any signal handler runs (signals come with the start).
        self._obs_id = inp.obs_id
        self._c = inp.carry if inp.carry is not None else ArrivalCarry()
        self._seen: set[str] = set(self._c.seen)
        self._rescan = False
        self._step = ARRIVING
        self._unembargo: str | None = None
        # Raws (and the expectedSensors file) whose next read is due at (workflow time);
        # not carried: a new run reads them at once.
        self._retry_at: dict[str, datetime] = {}
        self._expected_at: datetime | None = None

    # ------------------------------------------------------------------ signals and query

    @workflow.signal(name=OBJECT_SIGNAL)
    def object(self, ev: ObjectEvent) -> None:
        """A new object in the exposure's folder (a notification, a sweep, a listing)."""
        self._note(ev.name)

    @workflow.signal(name=RESCAN_SIGNAL)
    def rescan(self) -> None:
        """List the folder again (the sweep found objects no notification announced)."""
        self._rescan = True

    @workflow.query
    def state(self) -> ArrivalState:
        c = self._c
        missing = sorted(set(c.expected or []) - set(c.ingested.values()))
        return ArrivalState(
            obs_id=self._obs_id,
            step=self._step,
            seen=len(c.seen),
            raws_ingested=len(c.ingested),
            sidecars=c.sidecars,
            others=c.others,
            duplicates=c.duplicates,
            pending=len(c.pending),
            unreadable=sorted(c.unreadable),
            failed=dict(c.failed),
            expected=None if c.expected is None else len(c.expected),
            missing=missing,
            complete=c.complete,
            visit_defined=c.visits_done,
            embargo_end=c.embargo_end,
            unembargo=self._unembargo,
            runs=c.runs,
        )

    @workflow.query(name=SEEN_QUERY)
    def seen_names(self) -> list[str]:
        """Every object name this arrival has heard of (queries are not in history)."""
        return list(self._c.seen)

    def _note(self, name: str) -> None:
        c = self._c
        if name in self._seen:
            c.duplicates += 1
            return
        self._seen.add(name)
        c.seen.append(name)
        if c.first_seen is None:
            c.first_seen = workflow.now().isoformat()
        kind = file_kind(self._obs_id, name)
        if kind == RAW:
            c.pending.append(name)
        elif kind == EXPECTED:
            c.expected_pending = True
        elif kind == SIDECAR:
            c.sidecars += 1
        else:
            c.others += 1

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: ArrivalInput) -> ArrivalState:
        workflow.upsert_search_attributes(
            [
                SA_INSTRUMENT.value_set(inp.instrument),
                SA_DAY_OBS.value_set(inp.day_obs),
                SA_OBS_ID.value_set(inp.obs_id),
            ]
        )
        c = self._c
        if not c.complete:
            self._set_step(ARRIVING)
            if not c.listed:
                # Objects written before the first notification (or whose notification was lost).
                await self._list(inp)
            await self._arrive(inp)
        if not c.visits_done:
            self._set_step(VISITS)
            await self._visits(inp)
        await self._embargo_then_start(inp)
        return self.state()

    def _set_step(self, step: str) -> None:
        self._step = step
        workflow.upsert_search_attributes([SA_STEP.value_set(step)])

    async def _list(self, inp: ArrivalInput) -> None:
        self._rescan = False
        found: FolderReceipt = await self._act(inp, Step.LIST, self._folder(inp))
        for name in found.names:
            self._note(name)
        self._c.listed = True

    async def _arrive(self, inp: ArrivalInput) -> None:
        """Ingest raws as they come until every expected sensor has one, or give up."""
        c, policy = self._c, inp.policy
        while True:
            if self._rescan:
                await self._list(inp)
            if c.expected_pending:
                await self._read_expected(inp)
            if c.pending:
                if len(c.pending) < policy.batch_size:
                    # Let a burst of notifications fill the batch; an idle exposure waits no longer.
                    await _wait(
                        lambda: len(c.pending) >= policy.batch_size,
                        timeout=timedelta(seconds=policy.batch_wait_s),
                    )
                await self._ingest(inp, c.pending[: policy.batch_size])
            if self._is_complete():
                c.complete = True
                return
            self._retry_due()
            deadline = self._deadline(inp)
            if deadline is not None and workflow.now() >= deadline:
                self._give_up(inp)
            if self._should_continue(inp) and not c.pending:
                self._continue(inp)
            if c.pending or c.expected_pending or self._rescan:
                continue
            await _wait(
                lambda: bool(c.pending or c.expected_pending or self._rescan) or self._should_continue(inp),
                timeout=self._next_wake(deadline),
            )

    def _is_complete(self) -> bool:
        c = self._c
        return c.expected is not None and set(c.expected) <= set(c.ingested.values())

    def _deadline(self, inp: ArrivalInput) -> datetime | None:
        if self._c.first_seen is None:
            return None
        return datetime.fromisoformat(self._c.first_seen) + timedelta(seconds=inp.policy.incomplete_wait_s)

    def _next_wake(self, deadline: datetime | None) -> timedelta | None:
        times = [t for t in (deadline, self._expected_at, *self._retry_at.values()) if t is not None]
        if not times:
            return None
        return max(timedelta(0), min(times) - workflow.now()) + timedelta(milliseconds=1)

    def _retry_due(self) -> None:
        c, now = self._c, workflow.now()
        if self._expected_at is not None and self._expected_at <= now:
            self._expected_at = None
            c.expected_pending = True
        for name in [n for n, when in self._retry_at.items() if when <= now]:
            del self._retry_at[name]
            if name not in c.pending:
                c.pending.append(name)

    def _give_up(self, inp: ArrivalInput) -> None:
        c = self._c
        self._set_step(INCOMPLETE)
        if c.expected is None:
            what = f"no {inp.obs_id}_expectedSensors.json arrived"
        else:
            missing = sorted(set(c.expected) - set(c.ingested.values()))
            what = f"{len(missing)} of {len(c.expected)} expected sensors have no raw: {_some(missing)}"
        failed = f"; {len(c.failed)} file(s) failed: {_some(sorted(c.failed))}" if c.failed else ""
        unread = f"; {len(c.unreadable)} not readable: {_some(sorted(c.unreadable))}" if c.unreadable else ""
        raise ApplicationError(
            f"exposure {inp.obs_id} incomplete after {inp.policy.incomplete_wait_s:.0f}s: {what}{failed}"
            f"{unread}. Re-send the missing files; a new notification or `unembargo arrivals sweep` "
            "starts a new arrival that picks up where this one stopped.",
            type="IncompleteExposure",
            non_retryable=True,
        )

    async def _read_expected(self, inp: ArrivalInput) -> None:
        c = self._c
        c.expected_pending = False
        got: ExpectedReceipt = await self._act(inp, Step.EXPECTED, self._folder(inp))
        name = f"{inp.obs_id}_expectedSensors.json"
        c.failed.pop(name, None)
        if got.detectors is None:
            # Not readable (yet) or malformed: read again after retry_s, like a raw.
            if got.problem:
                c.failed[name] = got.problem
            self._expected_at = workflow.now() + timedelta(seconds=inp.policy.retry_s)
            return
        c.expected = sorted(got.detectors)

    async def _ingest(self, inp: ArrivalInput, batch: list[str]) -> None:
        c = self._c
        arg = IngestBatchInput(inp.instrument, inp.day_obs, inp.obs_id, batch, inp.policy.raw_formatter)
        got: IngestBatchReceipt = await self._act(inp, Step.INGEST, arg)
        done = set(batch)
        c.pending = [n for n in c.pending if n not in done]
        if got.facts is not None and c.facts is None:
            c.facts = got.facts
        for f in got.files:
            if f.outcome == UNREADABLE:
                c.unreadable[f.name] = c.unreadable.get(f.name, 0) + 1
                self._retry_at[f.name] = workflow.now() + timedelta(seconds=inp.policy.retry_s)
            elif f.outcome == FAILED:
                c.unreadable.pop(f.name, None)
                c.failed[f.name] = f.reason or "failed"
            else:
                c.unreadable.pop(f.name, None)
                c.failed.pop(f.name, None)
                c.ingested[f.name] = f.detector or f.name

    async def _visits(self, inp: ArrivalInput) -> None:
        facts = self._c.facts
        if facts is not None and facts.can_see_sky:
            await self._act(inp, Step.VISITS, VisitInput(inp.instrument, facts.exposure_id))
        self._c.visits_done = True

    async def _embargo_then_start(self, inp: ArrivalInput) -> None:
        c = self._c
        facts = c.facts
        if facts is None:
            raise ApplicationError(
                f"exposure {inp.obs_id} complete but no raw told its exposure id",
                type="MissingExposure",
                non_retryable=True,
            )
        if c.embargo_end is None:
            end: EmbargoReceipt = await self._act(
                inp, Step.EMBARGO, EmbargoInput(inp.instrument, facts.exposure_id)
            )
            c.embargo_end = end.end
        self._set_step(EMBARGOED)
        until = datetime.fromisoformat(c.embargo_end)
        # A durable timer: no worker is held while the embargo runs (80 h for science).
        while workflow.now() < until:
            await _wait(
                lambda: self._should_continue(inp), timeout=until - workflow.now() + timedelta(milliseconds=1)
            )
            if self._should_continue(inp):
                self._continue(inp)
        exposure = Exposure(inp.instrument, inp.day_obs, inp.obs_id, facts.exposure_id)
        started: StartReceipt = await self._act(inp, Step.START, StartInput(exposure))
        self._unembargo = f"{started.workflow_id} ({started.outcome})"
        self._set_step(STARTED)

    def _should_continue(self, inp: ArrivalInput) -> bool:
        info = workflow.info()
        return info.get_current_history_length() >= inp.policy.history_limit or (
            info.is_continue_as_new_suggested()
        )

    def _continue(self, inp: ArrivalInput) -> None:
        c = self._c
        c.runs += 1
        # Raws waiting for a retry are read at once by the next run.
        c.pending = [*c.pending, *(n for n in self._retry_at if n not in c.pending)]
        if self._rescan:
            c.listed = False
        if self._expected_at is not None:
            c.expected_pending = True
        workflow.continue_as_new(
            ArrivalInput(inp.instrument, inp.day_obs, inp.obs_id, inp.queue, inp.policy, c)
        )

    def _folder(self, inp: ArrivalInput) -> FolderInput:
        return FolderInput(inp.instrument, inp.day_obs, inp.obs_id)

    async def _act(self, inp: ArrivalInput, step: Step, arg: Any) -> Any:
        spec = STEPS[step]
        return await workflow.execute_activity(
            spec.activity,
            arg,
            result_type=spec.receipt,
            task_queue=inp.queue,
            start_to_close_timeout=spec.timeout,
            heartbeat_timeout=timedelta(seconds=inp.policy.heartbeat_s),
            retry_policy=spec.retry,
        )
