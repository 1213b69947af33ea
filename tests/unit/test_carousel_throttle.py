"""The per-tape throttle on the time-skipping server, with stub activities under the real names: a
small in-memory tape whose file rules move to OK one per lock check, shared by two requests, so
the stubs measure how many files are staging from the tape at once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.client.carousel import start_throttle, throttle_state
from unembargo.models.carousel import (
    CAROUSEL_WORKFLOW,
    FILE_MESSAGE,
    OK,
    REPLICATING,
    REQUEST_SIGNAL,
    STEPS,
    CarouselInput,
    CarouselPolicy,
    CarouselRequest,
    CarouselState,
    FileLock,
    LocksInput,
    LocksReceipt,
    PublishInput,
    PublishReceipt,
    ReruleInput,
    ReruleReceipt,
    RuleInput,
    RuleReceipt,
    Status,
    Step,
    request_workflow_id,
)
from unembargo.models.carousel_throttle import Asker, ThrottleLimits, grant, throttle_workflow_id
from unembargo.workflows.carousel import CarouselWorkflow
from unembargo.workflows.carousel_throttle import CarouselThrottleWorkflow

# A first check 5 s after a change leaves the test time to start the second request while the
# first one's granted files stage (time only skips while the test waits for results).
POLICY = CarouselPolicy(poll_first_s=5.0, poll_backoff=2.0, poll_max_s=10.0, heartbeat_s=30.0)
TAPE = f"TAPE_{uuid.uuid4().hex[:6]}"


@dataclass
class Tape:
    """Datasets on one tape and the file rules staging them."""

    datasets: dict[str, list[str]]
    # rule -> (file, state); files in the order they were ruled.
    rules: dict[str, list[str]] = field(default_factory=dict)
    ruled: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    peak: int = 0
    published: list[PublishInput] = field(default_factory=list)
    dataset_rules: int = 0

    def staging(self) -> int:
        return sum(1 for _, state in self.rules.values() if state == REPLICATING)

    def owner(self, name: str) -> str:
        return next(ds for ds, files in self.datasets.items() if name in files)


def stubs(t: Tape) -> list[object]:
    @activity.defn(name=STEPS[Step.RULE].activity)
    async def rule(inp: RuleInput) -> RuleReceipt:
        t.dataset_rules += 1
        return RuleReceipt("dataset-rule", adopted=False)

    @activity.defn(name=STEPS[Step.LOCKS].activity)
    async def locks(inp: LocksInput) -> LocksReceipt:
        mine = [r for r in inp.rule_ids if r in t.rules]
        moving = next((r for r in mine if t.rules[r][1] == REPLICATING), None)
        if moving is not None:
            t.rules[moving][1] = OK
        found = {t.rules[r][0]: FileLock(t.rules[r][0], t.rules[r][1], f"/d/{t.rules[r][0]}") for r in mine}
        return LocksReceipt(list(t.datasets[inp.name]), False, found, [])

    @activity.defn(name=STEPS[Step.RERULE].activity)
    async def rerule(inp: ReruleInput) -> ReruleReceipt:
        assert inp.source is not None
        made = []
        for name in inp.files:
            made.append(f"rule-{len(t.rules)}")
            t.rules[made[-1]] = [name, REPLICATING]
            t.ruled.append(name)
            t.sources.append(inp.source)
        t.peak = max(t.peak, t.staging())
        return ReruleReceipt(inp.source, made)

    @activity.defn(name=STEPS[Step.PUBLISH].activity)
    async def publish(inp: PublishInput) -> PublishReceipt:
        t.published.append(inp)
        return PublishReceipt(inp.message_id, f"r-{len(t.published)}")

    return [rule, locks, rerule, publish]


async def start(
    client: Client, queue: str, name: str, priority: int
) -> WorkflowHandle[object, CarouselState]:
    req = CarouselRequest("s", name, TAPE, "DISK", max_wait_s=3600.0, priority=priority)
    return await client.start_workflow(
        CAROUSEL_WORKFLOW,
        CarouselInput(req, {s.value: queue for s in Step}, POLICY, throttle=throttle_workflow_id(TAPE)),
        id=request_workflow_id(req.scope, req.name),
        task_queue=queue,
        result_type=CarouselState,
        start_signal=REQUEST_SIGNAL,
        start_signal_args=[req],
    )


async def test_two_requests_share_the_tape_by_priority(env: WorkflowEnvironment, queue: str) -> None:
    low, high = f"low-{uuid.uuid4().hex[:6]}", f"high-{uuid.uuid4().hex[:6]}"
    t = Tape({low: [f"{low}.f{i}" for i in range(5)], high: [f"{high}.f{i}" for i in range(5)]})
    limits = ThrottleLimits(staging=2, queued=100)
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[CarouselWorkflow, CarouselThrottleWorkflow],
        activities=stubs(t),
    ):
        throttle = await start_throttle(env.client, queue, TAPE, limits, rounds=3)
        first_run = throttle.result_run_id
        # The low-priority request asks first and gets both slots; the high one arrives while
        # they stage.
        handles = {low: await start(env.client, queue, low, 0)}
        deadline = time.monotonic() + 30
        while len((await handles[low].query("state", result_type=CarouselState)).granted) < 2:
            assert time.monotonic() < deadline, "the first request got no grant"
            await asyncio.sleep(0.05)
        handles[high] = await start(env.client, queue, high, 5)
        got = {name: await h.result() for name, h in handles.items()}
        held = await throttle_state(env.client, TAPE)
        latest = await env.client.get_workflow_handle(throttle_workflow_id(TAPE)).describe()

    # Never more than N files staging from the tape, as the stubs saw it and as the throttle counted.
    assert t.peak <= 2 and held.peak_staging <= 2 and held.peak_staging == 2
    assert set(t.sources) == {TAPE} and t.dataset_rules == 0
    # Once both asked, every slot freed went to the high-priority request until it had all its
    # files; the low one still finished.
    assert [t.owner(n) for n in t.ruled] == [low] * 2 + [high] * 5 + [low] * 3
    for name, s in got.items():
        assert s.transform_status == Status.FINISHED and sorted(s.announced) == t.datasets[name]
        assert (s.in_total_files, s.in_processed_files, s.out_total_files, s.output_processed_files) == (
            5, 5, 5, 5,
        )  # fmt: skip
        assert s.granted == sorted(s.granted) and len(s.granted) == 5 and s.asked == (5, 5)
    names = [json.loads(p.body)["name"] for p in t.published if p.type == FILE_MESSAGE]
    assert sorted(names) == sorted(t.ruled) and len(names) == 10
    # The throttle continued as new along the way and kept its place: nobody left waiting.
    assert latest.run_id != first_run and held.askers == [] and held.arrivals == 2


def test_queue_cap_admits_in_arrival_order() -> None:
    """The cap bounds the queue: an ask that does not fit waits outside, whatever its priority."""
    limits = ThrottleLimits(staging=1, queued=3)
    a = Asker("a", 0, wanted=3, done=0, order=0, since=0.0)
    b = Asker("b", 9, wanted=3, done=0, order=1, since=0.0)
    assert grant([a, b], limits, now=0.0) == {"a": 1} and not b.admitted
    a.done = 1
    # a has 2 queued, b's 3 would make 5: b still waits.
    assert grant([a, b], limits, now=1.0) == {"a": 2} and not b.admitted
    a.done = 2
    assert grant([a, b], limits, now=2.0) == {"a": 3} and b.admitted
    a.done = 3
    assert grant([a, b], limits, now=3.0) == {"b": 1}


def test_an_ask_larger_than_the_cap_enters_an_empty_queue() -> None:
    a = Asker("a", 0, wanted=50, done=0, order=0, since=0.0)
    assert grant([a], ThrottleLimits(staging=4, queued=10), now=0.0) == {"a": 4}
