"""The tape carousel flow: one durable workflow per dataset request (``carousel-<scope>-<name>``).

Deterministic code only. The workflow adopts or creates the dataset's rule, then reads its
replica locks on durable timers whose interval grows while nothing changes (no process polls
in a tight loop) and shrinks back when a file becomes available. Each file available at the
destination is announced once: the workflow remembers what it announced, and the message id
(a hash of the request id and the file's DID) is the same on every resend, so a consumer
deduplicates what STOMP's at-least-once delivery repeats.

Files stuck (a STUCK lock at once, or not available ``max_wait_s`` after their rule) get a new
rule from another source holding them, never one tried before; when no source is left, or after
``max_rerules``, the request waits for an operator's ``decide`` signal (retry, change source or
destination, give up) with the evidence in its ``state`` query. A rule that disappears
(cancelled, expired) is created again. The request finishes when the dataset is closed and every
file is processed (available or given up), with one dataset-level message.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate

with workflow.unsafe.imports_passed_through():
    from unembargo.models.carousel import (
        CAROUSEL_WORKFLOW,
        CHANGE,
        DATASET_MESSAGE,
        DECIDE_SIGNAL,
        DECISIONS,
        FILE_MESSAGE,
        GIVE_UP,
        OK,
        REQUEST_SIGNAL,
        STEPS,
        STUCK,
        CarouselInput,
        CarouselRequest,
        CarouselState,
        Decision,
        FileLock,
        LocksInput,
        LocksReceipt,
        PublishInput,
        ReruleInput,
        ReruleReceipt,
        RuleInput,
        RuleReceipt,
        Status,
        Step,
        Stuck,
        message_id,
    )
    from unembargo.models.carousel_throttle import ASK_SIGNAL, GRANT_SIGNAL, ThrottleAsk, ThrottleGrant
    from unembargo.models.names import (
        SA_CAROUSEL_PROCESSED,
        SA_CAROUSEL_STATUS,
        SA_CAROUSEL_TOTAL,
        SA_STEP,
    )

WAITING_LOCKS = "waiting"


@workflow.defn(name=CAROUSEL_WORKFLOW)
class CarouselWorkflow:
    @workflow.init
    def __init__(self, inp: CarouselInput) -> None:
        r = inp.request
        self._s = inp.carry or CarouselState(
            request_id=workflow.info().workflow_id,
            scope=r.scope,
            name=r.name,
            src_rse=r.src_rse,
            dest_rse=r.dest_rse,
            throttle=inp.throttle if r.rule_id is None else None,
        )
        self._decision: Decision | None = None

    @workflow.signal(name=GRANT_SIGNAL)
    def grant(self, grant: ThrottleGrant) -> None:
        """The tape's throttle: files this request may have staging in all."""
        self._s.grant_total = max(self._s.grant_total, grant.granted)

    @workflow.signal(name=REQUEST_SIGNAL)
    def request(self, request: CarouselRequest) -> None:
        """A request for this dataset (the first, or another that joins this workflow)."""
        self._s.requests += 1

    @workflow.signal(name=DECIDE_SIGNAL)
    def decide(self, decision: Decision) -> None:
        """An operator's decision about a request waiting for them."""
        if self._s.operator is not None and decision.action in DECISIONS:
            self._decision = decision

    @workflow.query
    def state(self) -> CarouselState:
        return self._s

    @workflow.run
    async def run(self, inp: CarouselInput) -> CarouselState:
        s, r, policy = self._s, inp.request, inp.policy
        if not s.sources:
            s.sources = [r.src_rse]
            if s.throttle is None:
                got: RuleReceipt = await self._act(
                    inp, Step.RULE, RuleInput(r.scope, r.name, s.dest_rse, r.src_rse, r.rule_id, r.lifetime_s)
                )
                s.rule_ids, s.adopted = [got.rule_id], got.adopted
        interval = policy.poll_first_s
        while True:
            self._update(Step.LOCKS)
            locks: LocksReceipt = await self._act(
                inp, Step.LOCKS, LocksInput(r.scope, r.name, s.dest_rse, list(s.rule_ids), r.lifetime_s)
            )
            s.checks += 1
            if locks.gone:
                await self._recreate(inp, locks)
                continue
            newly = self._take(locks)
            for lock in newly:
                await self._announce(inp, lock)
            stuck, reason = self._stuck(inp, locks)
            if stuck:
                await self._unstick(inp, stuck, reason)
                interval = policy.poll_first_s
                continue
            await self._pace(inp, locks.files)
            if not locks.open and s.in_processed_files == s.in_total_files:
                break
            self._update(WAITING_LOCKS)
            # A grant from the throttle is taken up at the next check (waking early would cancel
            # the timer, which the time-skipping test server mishandles).
            await workflow.sleep(timedelta(seconds=interval))
            interval = (
                policy.poll_first_s if newly else min(interval * policy.poll_backoff, policy.poll_max_s)
            )
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(CarouselInput(r, inp.queues, policy, s))
        return await self._finish(inp)

    # ------------------------------------------------------------------ files

    def _take(self, locks: LocksReceipt) -> list[FileLock]:
        """Record the dataset's files; those newly available, in the order they became so."""
        s = self._s
        s.in_status = "Processing" if locks.open else "Closed"
        s.in_total_files = len(locks.files)
        s.out_total_files = s.in_total_files - len(s.given_up)
        now = workflow.now().isoformat()
        done = set(s.announced) | set(s.given_up)
        granted = set(s.granted)
        for name in locks.files:
            # A throttled file waits on its source from its grant (its rule) on.
            if name not in done and (s.throttle is None or name in granted):
                s.waiting_since.setdefault(name, now)
        newly = [
            lock
            for name in locks.files
            if name not in done and (lock := locks.locks.get(name)) and lock.state == OK
        ]
        # Rucio does not say when a lock became OK: files seen at one check go in name order.
        return sorted(newly, key=lambda lock: lock.name)

    async def _pace(self, inp: CarouselInput, files: list[str]) -> None:
        """Throttled: rule the files granted since the last check, then tell the throttle the
        totals (files wanted, granted files done) when they changed."""
        s, r = self._s, inp.request
        if s.throttle is None:
            return
        done = set(s.announced) | set(s.given_up)
        granted = set(s.granted)
        pending = [n for n in files if n not in granted and n not in done]
        take = pending[: max(0, s.grant_total - len(s.granted))]
        if take:
            self._update(Step.RERULE)
            got: ReruleReceipt = await self._act(
                inp, Step.RERULE, ReruleInput(r.scope, take, s.dest_rse, [], r.lifetime_s, r.src_rse)
            )
            s.rule_ids.extend(i for i in got.rule_ids if i not in s.rule_ids)
            s.granted.extend(take)
            now = workflow.now().isoformat()
            for name in take:
                s.waiting_since[name] = now
        asked = (len(s.granted) + len(pending) - len(take), sum(1 for n in s.granted if n in done))
        if asked != s.asked:
            await workflow.get_external_workflow_handle(s.throttle).signal(
                ASK_SIGNAL, ThrottleAsk(s.request_id, r.priority, *asked)
            )
            s.asked = asked

    async def _announce(self, inp: CarouselInput, lock: FileLock) -> None:
        """One ``file_stagein`` message for a file now available (never a second one)."""
        s = self._s
        body = {
            "msg_type": FILE_MESSAGE,
            "request_id": s.request_id,
            "scope": s.scope,
            "dataset": s.name,
            "name": lock.name,
            "rse": s.dest_rse,
            "path": lock.path,
            "bytes": lock.bytes,
            "adler32": lock.adler32,
            "status": "Available",
        }
        await self._publish(inp, message_id(s.request_id, s.scope, lock.name), FILE_MESSAGE, body)
        s.announced.append(lock.name)
        s.waiting_since.pop(lock.name, None)
        s.in_processed_files = len(s.announced) + len(s.given_up)
        s.output_processed_files = len(s.announced)
        s.out_status = "Processing"

    def _stuck(self, inp: CarouselInput, locks: LocksReceipt) -> tuple[list[str], str]:
        """Files that will not stage from their current source: STUCK locks, or waiting too long."""
        s = self._s
        now = workflow.now()
        limit = timedelta(seconds=inp.request.max_wait_s)
        by_lock = sorted(
            n for n in s.waiting_since if (lock := locks.locks.get(n)) is not None and lock.state == STUCK
        )
        if by_lock:
            return by_lock, "STUCK lock"
        late = sorted(
            n for n, since in s.waiting_since.items() if now - datetime.fromisoformat(since) >= limit
        )
        return late, f"not available {inp.request.max_wait_s:.0f}s after its rule"

    async def _unstick(self, inp: CarouselInput, files: list[str], reason: str) -> None:
        """A rule from another source; when none is left (or too many were tried), an operator."""
        s, r = self._s, inp.request
        s.stuck.append(Stuck(files, s.sources[-1], reason, workflow.now().isoformat()))
        workflow.logger.warning(
            "%s: %d file(s) stuck at %s: %s", s.request_id, len(files), s.sources[-1], reason
        )
        if s.rerules < inp.policy.max_rerules:
            self._update(Step.RERULE)
            got: ReruleReceipt = await self._act(
                inp,
                Step.RERULE,
                ReruleInput(r.scope, files, s.dest_rse, [*s.sources, s.dest_rse], r.lifetime_s),
            )
            if got.source is not None:
                self._rerouted(files, got)
                return
        await self._ask_operator(inp, files, reason)

    def _rerouted(self, files: list[str], got: ReruleReceipt) -> None:
        s = self._s
        assert got.source is not None
        s.rerules += 1
        s.sources.append(got.source)
        s.rule_ids.extend(i for i in got.rule_ids if i not in s.rule_ids)
        now = workflow.now().isoformat()
        for name in files:
            s.waiting_since[name] = now

    async def _ask_operator(self, inp: CarouselInput, files: list[str], reason: str) -> None:
        s, r = self._s, inp.request
        s.operator = (
            f"{len(files)} file(s) not staged ({reason}); sources tried: {', '.join(s.sources)}. "
            f"Decide: retry (any source again), change (--src-rse/--dest-rse), give_up."
        )
        self._decision = None
        s.transform_status = Status.OPERATOR.value
        self._update(Status.OPERATOR.value)
        await workflow.wait_condition(lambda: self._decision is not None)
        decision = self._decision or Decision(GIVE_UP)
        s.decisions.append(f"{workflow.now().isoformat()} {decision.action}")
        s.operator, s.transform_status = None, Status.TRANSFORMING.value
        if decision.action == GIVE_UP:
            for name in files:
                s.waiting_since.pop(name, None)
                s.given_up.append(name)
            s.in_processed_files = len(s.announced) + len(s.given_up)
            s.out_total_files = s.in_total_files - len(s.given_up)
            return
        if decision.action == CHANGE and decision.dest_rse and decision.dest_rse != s.dest_rse:
            s.dest_rse = decision.dest_rse
            source = decision.src_rse or s.src_rse
            if s.throttle is not None:
                # The granted files not done get rules to the new destination; the rest follow
                # as granted.
                done = set(s.announced) | set(s.given_up)
                left = [n for n in s.granted if n not in done]
                rr_dest: ReruleReceipt = await self._act(
                    inp, Step.RERULE, ReruleInput(r.scope, left, s.dest_rse, [], r.lifetime_s, source)
                )
                s.rule_ids, s.sources = list(rr_dest.rule_ids), [source]
                self._rerouted_all()
                return
            got: RuleReceipt = await self._act(
                inp, Step.RULE, RuleInput(r.scope, r.name, s.dest_rse, source, None, r.lifetime_s)
            )
            s.rule_ids, s.sources = [got.rule_id], [source]
            self._rerouted_all()
            return
        # retry: any source but the destination; change: the operator's source.
        chosen = decision.src_rse if decision.action == CHANGE else None
        rr: ReruleReceipt = await self._act(
            inp, Step.RERULE, ReruleInput(r.scope, files, s.dest_rse, [s.dest_rse], r.lifetime_s, chosen)
        )
        s.rerules = 0
        if rr.source is None:
            await self._ask_operator(inp, files, "no source holds them")
            return
        self._rerouted(files, rr)

    def _rerouted_all(self) -> None:
        now = workflow.now().isoformat()
        for name in self._s.waiting_since:
            self._s.waiting_since[name] = now

    async def _recreate(self, inp: CarouselInput, locks: LocksReceipt) -> None:
        """A rule that disappeared: the dataset's is created again; a stuck files' rule is dropped
        (its files wait again, from the dataset's rule, until they are re-ruled). Throttled (no
        dataset rule): granted files left without a lock are ruled again from the tape."""
        s, r, gone = self._s, inp.request, locks.gone
        workflow.logger.warning("%s: rules gone: %s", s.request_id, ", ".join(gone))
        if s.throttle is not None:
            s.rule_ids = [i for i in s.rule_ids if i not in gone]
            done = set(s.announced) | set(s.given_up)
            lost = [n for n in s.granted if n not in done and n not in locks.locks]
            if lost:
                rr: ReruleReceipt = await self._act(
                    inp, Step.RERULE, ReruleInput(r.scope, lost, s.dest_rse, [], r.lifetime_s, r.src_rse)
                )
                s.rule_ids.extend(i for i in rr.rule_ids if i not in s.rule_ids)
            return
        dataset_rule = s.rule_ids[0]
        s.rule_ids = [i for i in s.rule_ids if i not in gone]
        if dataset_rule in gone:
            got: RuleReceipt = await self._act(
                inp, Step.RULE, RuleInput(r.scope, r.name, s.dest_rse, s.sources[0], None, r.lifetime_s)
            )
            s.rule_ids.insert(0, got.rule_id)

    async def _finish(self, inp: CarouselInput) -> CarouselState:
        s = self._s
        s.transform_status = (
            Status.FINISHED if not s.given_up else Status.SUBFINISHED if s.announced else Status.FAILED
        ).value
        body = {
            "msg_type": DATASET_MESSAGE,
            "request_id": s.request_id,
            "scope": s.scope,
            "name": s.name,
            "rse": s.dest_rse,
            "status": s.transform_status,
            "files": len(s.announced),
            "not_staged": s.given_up,
        }
        await self._publish(inp, message_id(s.request_id, s.scope, s.name), DATASET_MESSAGE, body)
        s.out_status = "Finished"
        self._update(s.transform_status)
        return s

    # ------------------------------------------------------------------ calls

    async def _publish(self, inp: CarouselInput, mid: str, kind: str, body: dict[str, Any]) -> None:
        policy = inp.policy
        self._update(Step.PUBLISH)
        await self._act(
            inp,
            Step.PUBLISH,
            PublishInput(policy.destination, mid, kind, json.dumps(body, sort_keys=True), policy.ttl_s),
        )

    def _update(self, step: str) -> None:
        s = self._s
        attrs: list[SearchAttributeUpdate[Any]] = [
            SA_STEP.value_set(step),
            SA_CAROUSEL_STATUS.value_set(s.transform_status),
            SA_CAROUSEL_TOTAL.value_set(s.in_total_files),
            SA_CAROUSEL_PROCESSED.value_set(s.output_processed_files),
        ]
        workflow.upsert_search_attributes(attrs)

    async def _act(self, inp: CarouselInput, step: Step, arg: Any) -> Any:
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
