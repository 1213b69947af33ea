"""The rawintegrity flow: one durable workflow per raw file, and one registration batcher per tape RSE.

Deterministic code only. A file's workflow puts the file to tape, waits for migration on durable
timers (no process polls), compares checksums, asks the batcher to register it, and removes the
online copy last. The safety rule: nothing removes the online copy before a tape copy with the
source's adler32 is registered; the removal activity checks both again when it removes.

Anything retrying cannot fix (a bad tape copy ``max_transfers`` times, no migration within
``migration_limit_s``, a Rucio conflict, a refused removal) makes the file wait for an operator's
``decide`` signal (retry or give_up) with the evidence in its ``state`` query.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from unembargo.models.names import SA_RAW_BYTES, SA_RAW_STATE, SA_STEP
    from unembargo.models.rawintegrity import (
        BATCH_WORKFLOW,
        DECIDE_SIGNAL,
        FILE_WORKFLOW,
        GIVE_UP,
        REGISTER_SIGNAL,
        REGISTERED_SIGNAL,
        RETRY,
        STEP_DONE,
        STEPS,
        WAITING_MIGRATION,
        WAITING_OPERATOR,
        BatchCarry,
        BatchInput,
        Mismatch,
        PutInput,
        PutReceipt,
        RawFileInput,
        RawFileState,
        RegisterBatchInput,
        RegisterBatchReceipt,
        RegisteredReply,
        RegisterRequest,
        RemoveOnlineInput,
        RemoveTapeInput,
        RequestInput,
        State,
        Step,
        TapeInput,
        TapeReceipt,
    )


class _OperatorNeeded(Exception):
    """Internal: the file cannot go on without an operator; the message is the evidence."""


def _reason(err: ActivityError) -> str:
    """'<ErrorName>: <message>' of a failed activity (messages name files, never contents)."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'Error'}: {cause.message}"
    return f"{type(cause).__name__}: {cause}"


@workflow.defn(name=FILE_WORKFLOW)
class RawFileWorkflow:
    @workflow.init
    def __init__(self, inp: RawFileInput) -> None:
        self._s = RawFileState(lfn=inp.lfn, state=State.ACTIVE, step=Step.PUT)
        self._reply: RegisteredReply | None = None
        self._decision: str | None = None

    @workflow.signal(name=REGISTERED_SIGNAL)
    def registered(self, reply: RegisteredReply) -> None:
        """The batcher's answer to this file's registration request."""
        if reply.lfn == self._s.lfn:
            self._reply = reply

    @workflow.signal(name=DECIDE_SIGNAL)
    def decide(self, decision: str) -> None:
        """An operator's decision about a file waiting for them: retry or give_up."""
        if self._s.operator is not None and decision in (RETRY, GIVE_UP):
            self._decision = decision

    @workflow.query
    def state(self) -> RawFileState:
        return self._s

    @workflow.run
    async def run(self, inp: RawFileInput) -> RawFileState:
        self._set(State.ACTIVE, Step.PUT)
        await self._until_done(inp, self._to_tape)
        self._set(State.COPIED, Step.REQUEST)
        await self._until_done(inp, self._register)
        self._set(State.REGISTERED, Step.REMOVE_ONLINE)
        await self._until_done(inp, self._remove_online)
        self._set(State.DONE, STEP_DONE)
        return self._s

    def _set(self, state: State, step: str) -> None:
        """Move to ``state`` and ``step``; a state of lower rank is refused, and Done is final."""
        current = State(self._s.state)
        if current is State.DONE or state.rank < current.rank:
            raise ApplicationError(
                f"{self._s.lfn}: state {current} cannot go back to {state}", type="StateRegression"
            )
        self._s.state, self._s.step = state.value, step
        attrs: list[SearchAttributeUpdate[Any]] = [
            SA_RAW_STATE.value_set(state.value),
            SA_STEP.value_set(step),
        ]
        if self._s.size is not None:
            attrs.append(SA_RAW_BYTES.value_set(float(self._s.size)))
        workflow.upsert_search_attributes(attrs)

    def _set_step(self, step: str) -> None:
        self._s.step = step
        workflow.upsert_search_attributes([SA_STEP.value_set(step)])

    async def _until_done(self, inp: RawFileInput, part: Any) -> None:
        """Run one part of the flow; whenever it needs an operator, wait for their decision."""
        while True:
            try:
                await part(inp)
                return
            except _OperatorNeeded as need:
                await self._ask_operator(str(need))
            except ActivityError as err:
                # Only non-retryable (named, bad-input) errors get here: the others retry for ever.
                await self._ask_operator(_reason(err))

    async def _ask_operator(self, reason: str) -> None:
        s = self._s
        step = s.step
        s.operator = reason
        self._decision = None
        self._set_step(WAITING_OPERATOR)
        workflow.logger.warning("%s waits for an operator: %s", s.lfn, reason)
        await workflow.wait_condition(lambda: self._decision is not None)
        decision = self._decision or RETRY
        s.decisions.append(f"{workflow.now().isoformat()} {decision}")
        s.operator = None
        if decision == GIVE_UP:
            self._set(State.FAILED, WAITING_OPERATOR)
            raise ApplicationError(
                f"{s.lfn}: an operator gave up after: {reason}. The online copy is kept; "
                "`unembargo rawintegrity put` starts the file again.",
                type="GivenUp",
                non_retryable=True,
            )
        self._set_step(step)

    # ------------------------------------------------------------------ to tape

    async def _to_tape(self, inp: RawFileInput) -> None:
        """Put and wait for migration until tape holds the source's checksum (bounded transfers)."""
        s, policy = self._s, inp.policy
        for _ in range(policy.max_transfers):
            s.transfers += 1
            self._set_step(Step.PUT)
            put: PutReceipt = await self._act(
                inp, Step.PUT, PutInput(s.lfn, inp.online, inp.tape, s.transfers)
            )
            if s.adler32 is None:
                s.size, s.adler32 = put.size, put.adler32
                self._set(State.ACTIVE, Step.PUT)
            elif (put.size, put.adler32) != (s.size, s.adler32):
                # A retry takes the file as it is now (a tape copy of the old one fails the comparison).
                old, s.size, s.adler32 = f"{s.size} bytes, adler32 {s.adler32}", put.size, put.adler32
                raise _OperatorNeeded(
                    f"SourceChanged: the online {s.lfn} has {put.size} bytes, adler32 {put.adler32}, not the "
                    f"{old} of its first put. Retry puts it as it is now; give_up keeps it online."
                )
            s.put_at = workflow.now().isoformat()
            tape = await self._wait_migration(inp)
            if tape.adler32 == s.adler32 and tape.size == s.size:
                s.migrated_at, s.migration_s = workflow.now().isoformat(), tape.migration_s
                return
            found = f"{tape.adler32} ({tape.size} bytes)"
            s.mismatches.append(
                Mismatch(s.transfers, f"{s.adler32} ({s.size} bytes)", found, workflow.now().isoformat())
            )
            workflow.logger.warning(
                "TapeChecksumMismatch: %s on tape %s, expected %s", s.lfn, found, s.adler32
            )
            self._set_step(Step.REMOVE_TAPE)
            await self._act(inp, Step.REMOVE_TAPE, RemoveTapeInput(s.lfn, inp.tape, tape.adler32 or ""))
        last = s.mismatches[-1]
        raise _OperatorNeeded(
            f"TapeChecksumMismatch: {len(s.mismatches)} tape copies of {s.lfn} were bad (last: {last.found}, "
            f"expected {last.expected}); each was removed from tape. Retry transfers it again; give_up keeps "
            "the online copy."
        )

    async def _wait_migration(self, inp: RawFileInput) -> TapeReceipt:
        """Durable timers with growing intervals until the tape system says the file migrated."""
        s, policy = self._s, inp.policy
        self._set_step(WAITING_MIGRATION)
        start = workflow.now()
        limit = timedelta(seconds=policy.migration_limit_s)
        interval = policy.migration_first_s
        while True:
            left = (start + limit) - workflow.now()
            await workflow.sleep(max(timedelta(0), min(timedelta(seconds=interval), left)))
            tape: TapeReceipt = await self._act(inp, Step.TAPE, TapeInput(s.lfn, inp.tape))
            s.migration_checks += 1
            if tape.migrated:
                return tape
            if workflow.now() - start >= limit:
                raise _OperatorNeeded(
                    f"NeverMigrated: {s.lfn} is not on tape {policy.migration_limit_s:.0f}s after its put "
                    f"({s.migration_checks} checks). Retry waits again; give_up keeps the online copy."
                )
            interval = min(interval * policy.migration_backoff, policy.migration_max_interval_s)

    # ------------------------------------------------------------------ register and remove

    async def _register(self, inp: RawFileInput) -> None:
        """Ask the batcher until it answers; a request unanswered in time is sent again."""
        s = self._s
        assert s.size is not None and s.adler32 is not None
        request = RegisterRequest(s.lfn, s.size, s.adler32, workflow.info().workflow_id)
        while True:
            self._reply = None
            await self._act(
                inp,
                Step.REQUEST,
                RequestInput(
                    request,
                    inp.rse,
                    inp.queues[Step.REGISTER.value],
                    inp.workflow_queue,
                    inp.policy.register_batch_size,
                    inp.policy.heartbeat_s,
                ),
            )
            self._set_step(Step.REGISTER)
            try:
                await workflow.wait_condition(
                    lambda: self._reply is not None, timeout=timedelta(seconds=inp.policy.register_reply_s)
                )
            except TimeoutError:
                continue
            reply = self._reply
            if reply is not None and reply.ok:
                return
            raise _OperatorNeeded(reply.error if reply and reply.error else "registration refused")

    async def _remove_online(self, inp: RawFileInput) -> None:
        s = self._s
        assert s.size is not None and s.adler32 is not None
        self._set_step(Step.REMOVE_ONLINE)
        await self._act(
            inp,
            Step.REMOVE_ONLINE,
            RemoveOnlineInput(s.lfn, inp.online, inp.tape, s.size, s.adler32, inp.rse),
        )

    async def _act(self, inp: RawFileInput, step: Step, arg: Any) -> Any:
        spec = STEPS[step]
        return await workflow.execute_activity(
            spec.activity,
            arg,
            result_type=spec.receipt,
            task_queue=inp.queues[step.value],
            start_to_close_timeout=spec.timeout,
            heartbeat_timeout=timedelta(seconds=inp.policy.heartbeat_s),
            retry_policy=spec.retry,
        )


@workflow.defn(name=BATCH_WORKFLOW)
class RegisterBatchWorkflow:
    """Collects registration requests (signals) and registers them in Rucio, batch_size at a time.

    Exactly once per file: requests are keyed by LFN (a request sent again while one waits is the
    same entry), the Rucio activity adds only replicas Rucio lacks and answers each file by signal;
    requests not yet answered are carried to the next run (continue-as-new).
    """

    @workflow.init
    def __init__(self, inp: BatchInput) -> None:
        self._c = inp.carry if inp.carry is not None else BatchCarry()
        self._pending: dict[str, RegisterRequest] = {r.lfn: r for r in self._c.pending}

    @workflow.signal(name=REGISTER_SIGNAL)
    def register(self, request: RegisterRequest) -> None:
        self._pending[request.lfn] = request

    @workflow.query
    def state(self) -> BatchCarry:
        return BatchCarry(list(self._pending.values()), self._c.batches, self._c.files, self._c.runs)

    @workflow.run
    async def run(self, inp: BatchInput) -> None:
        policy, c = inp.policy, self._c
        batches_this_run = 0
        while True:
            await workflow.wait_condition(lambda: bool(self._pending))
            if len(self._pending) < policy.batch_size:
                # Let the night's files fill the batch; a quiet hour waits no longer than this.
                try:
                    await workflow.wait_condition(
                        lambda: len(self._pending) >= policy.batch_size,
                        timeout=timedelta(seconds=policy.batch_wait_s),
                    )
                except TimeoutError:
                    pass
            batch = list(self._pending.values())[: policy.batch_size]
            got: RegisterBatchReceipt = await workflow.execute_activity(
                STEPS[Step.REGISTER].activity,
                RegisterBatchInput(inp.rse, batch),
                result_type=RegisterBatchReceipt,
                task_queue=inp.queue,
                start_to_close_timeout=STEPS[Step.REGISTER].timeout,
                heartbeat_timeout=timedelta(seconds=policy.heartbeat_s),
                retry_policy=STEPS[Step.REGISTER].retry,
            )
            for request in batch:
                if self._pending.get(request.lfn) == request:
                    del self._pending[request.lfn]
            await asyncio.gather(*(self._answer(r, got) for r in batch))
            c.batches += 1
            c.files += len(batch)
            batches_this_run += 1
            if batches_this_run >= policy.batches_per_run or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                c.pending, c.runs = list(self._pending.values()), c.runs + 1
                workflow.continue_as_new(BatchInput(inp.rse, inp.queue, policy, c))

    async def _answer(self, request: RegisterRequest, got: RegisterBatchReceipt) -> None:
        conflict = got.conflicts.get(request.lfn)
        reply = RegisteredReply(request.lfn, ok=conflict is None, error=conflict)
        try:
            await workflow.get_external_workflow_handle(request.reply_to).signal(REGISTERED_SIGNAL, reply)
        except Exception as err:  # noqa: BLE001 - a file workflow that is gone asks again if it comes back
            workflow.logger.info("could not answer %s: %s", request.reply_to, err)
