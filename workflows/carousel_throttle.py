"""The carousel's per-tape throttle: one long-lived workflow (``carousel-throttle-<rse>``).

Deterministic code only. Requests signal their asks (totals, see models/carousel_throttle.py);
each round fills the tape's free slots and signals every request whose grant grew. The workflow
never ends: it continues as new with its state after ``rounds`` rounds, or when Temporal
suggests it, and signals reach whichever run is current (they are sent to the id).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from unembargo.models.carousel_throttle import (
        ASK_SIGNAL,
        GRANT_SIGNAL,
        LIMITS_SIGNAL,
        THROTTLE_WORKFLOW,
        Asker,
        ThrottleAsk,
        ThrottleGrant,
        ThrottleInput,
        ThrottleLimits,
        ThrottleState,
        grant,
        staging,
    )


@workflow.defn(name=THROTTLE_WORKFLOW)
class CarouselThrottleWorkflow:
    @workflow.init
    def __init__(self, inp: ThrottleInput) -> None:
        self._s = inp.carry or ThrottleState(rse=inp.rse, limits=inp.limits)
        self._dirty = inp.carry is not None

    @workflow.signal(name=LIMITS_SIGNAL)
    def limits(self, limits: ThrottleLimits) -> None:
        """The tape's limits as the newest request's settings say."""
        if limits != self._s.limits:
            self._s.limits, self._dirty = limits, True

    @workflow.signal(name=ASK_SIGNAL)
    def ask(self, ask: ThrottleAsk) -> None:
        """A request's totals: a new place in the queue, or its place updated."""
        s = self._s
        held = next((a for a in s.askers if a.request_id == ask.request_id), None)
        if held is None:
            if ask.wanted <= ask.done:
                return
            # A request whose earlier files were all done comes back with those already granted.
            held = Asker(ask.request_id, ask.priority, ask.wanted, ask.done, s.arrivals, self._now())
            held.granted = ask.done
            s.arrivals += 1
            s.askers.append(held)
        held.priority = ask.priority
        held.wanted = max(held.wanted, ask.wanted)
        held.done = max(held.done, min(ask.done, held.granted))
        if held.done >= held.wanted:
            s.askers.remove(held)
        self._dirty = True

    @workflow.query
    def state(self) -> ThrottleState:
        return self._s

    @workflow.run
    async def run(self, inp: ThrottleInput) -> None:
        s = self._s
        while True:
            await workflow.wait_condition(lambda: self._dirty)
            self._dirty = False
            changed = grant(s.askers, s.limits, self._now())
            s.peak_staging = max(s.peak_staging, staging(s.askers))
            for request_id, total in changed.items():
                await self._answer(request_id, total)
            s.rounds += 1
            if not self._dirty and (s.rounds >= inp.rounds or workflow.info().is_continue_as_new_suggested()):
                s.rounds = 0
                workflow.continue_as_new(ThrottleInput(s.rse, s.limits, inp.rounds, s))

    async def _answer(self, request_id: str, total: int) -> None:
        s = self._s
        s.grants += 1
        try:
            await workflow.get_external_workflow_handle(request_id).signal(GRANT_SIGNAL, ThrottleGrant(total))
        except Exception:  # noqa: BLE001 - the request is gone (terminated): its place is freed
            workflow.logger.warning("%s: request %s is gone; its place is freed", s.rse, request_id)
            s.askers = [a for a in s.askers if a.request_id != request_id]
            self._dirty = True

    def _now(self) -> float:
        return workflow.now().timestamp()
