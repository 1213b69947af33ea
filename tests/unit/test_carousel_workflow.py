"""The carousel workflow's logic on the time-skipping server, with stub activities under the real
names: a small in-memory Rucio (a dataset, its rules and their locks) that each lock check moves
on, and a broker that records what was published (and can refuse for a while)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.models.carousel import (
    CAROUSEL_WORKFLOW,
    CHANGE,
    DATASET_MESSAGE,
    DECIDE_SIGNAL,
    FILE_MESSAGE,
    GIVE_UP,
    OK,
    REPLICATING,
    REQUEST_SIGNAL,
    STEPS,
    STUCK,
    CarouselInput,
    CarouselPolicy,
    CarouselRequest,
    CarouselState,
    Decision,
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
    message_id,
    request_workflow_id,
)
from unembargo.workflows.carousel import CarouselWorkflow

POLICY = CarouselPolicy(poll_first_s=1.0, poll_backoff=2.0, poll_max_s=8.0, heartbeat_s=10.0)


@dataclass
class World:
    """Rucio and the broker as the stubs see them."""

    files: list[str]
    open: bool = True
    # Lock checks after which the dataset closes (and more files are attached meanwhile).
    close_after: int | None = None
    attach: dict[int, list[str]] = field(default_factory=dict)
    # rule -> name -> state; a check moves one REPLICATING lock of each rule to OK.
    rules: dict[str, dict[str, str]] = field(default_factory=dict)
    stuck: set[str] = field(default_factory=set)
    # RSEs holding replicas of every file, in order of preference.
    sources: list[str] = field(default_factory=lambda: ["TAPE_A"])
    rule_calls: list[RuleInput] = field(default_factory=list)
    reruled: list[ReruleInput] = field(default_factory=list)
    cancel_at: int | None = None
    broker_down_for: int = 0
    published: list[PublishInput] = field(default_factory=list)
    checks: int = 0
    dataset_rules: list[str] = field(default_factory=list)
    made: int = 0

    def new_rule(self, names: list[str], source: str) -> str:
        rule = f"rule-{self.made}"
        self.made += 1
        self.rules[rule] = {n: (STUCK if (n, source) in self.stuck_at else REPLICATING) for n in names}
        return rule

    @property
    def stuck_at(self) -> set[tuple[str, str]]:
        return {(n, self.sources[0]) for n in self.stuck}

    def messages(self, kind: str) -> list[dict[str, object]]:
        return [json.loads(p.body) for p in self.published if p.type == kind]


def stubs(w: World) -> list[object]:
    @activity.defn(name=STEPS[Step.RULE].activity)
    async def rule(inp: RuleInput) -> RuleReceipt:
        w.rule_calls.append(inp)
        if inp.rule_id is not None:
            return RuleReceipt(inp.rule_id, adopted=True)
        w.dataset_rules.append(w.new_rule(list(w.files), inp.source_expression))
        return RuleReceipt(w.dataset_rules[-1], adopted=False)

    @activity.defn(name=STEPS[Step.LOCKS].activity)
    async def locks(inp: LocksInput) -> LocksReceipt:
        w.checks += 1
        # The judge gives files attached later a lock of each rule on the dataset.
        for name in w.attach.get(w.checks, []):
            w.files.append(name)
            for r in w.dataset_rules:
                w.rules.get(r, {})[name] = REPLICATING
        if w.close_after is not None and w.checks >= w.close_after:
            w.open = False
        if w.cancel_at == w.checks:
            w.rules.pop(inp.rule_ids[0], None)
        gone = [r for r in inp.rule_ids if r not in w.rules]
        best: dict[str, FileLock] = {}
        order = {OK: 0, REPLICATING: 1, STUCK: 2}
        for r in inp.rule_ids:
            held = w.rules.get(r, {})
            moving = next((n for n, s in held.items() if s == REPLICATING), None)
            if moving is not None:
                held[moving] = OK
            for n, s in held.items():
                lock = FileLock(n, s, f"/dest/{n}", 10, "0000000a")
                if n not in best or order[s] < order[best[n].state]:
                    best[n] = lock
        return LocksReceipt(list(w.files), w.open, best, gone)

    @activity.defn(name=STEPS[Step.RERULE].activity)
    async def rerule(inp: ReruleInput) -> ReruleReceipt:
        w.reruled.append(inp)
        choices = [inp.source] if inp.source else [s for s in w.sources if s not in inp.excluded]
        if not choices:
            return ReruleReceipt(None, [])
        return ReruleReceipt(choices[0], [w.new_rule(inp.files, "elsewhere")])

    @activity.defn(name=STEPS[Step.PUBLISH].activity)
    async def publish(inp: PublishInput) -> PublishReceipt:
        if w.broker_down_for > 0:
            w.broker_down_for -= 1
            raise ApplicationError("no receipt from the broker", type="BrokerUnavailable")
        w.published.append(inp)
        return PublishReceipt(inp.message_id, f"r-{len(w.published)}")

    return [rule, locks, rerule, publish]


def request(**fields: object) -> CarouselRequest:
    base: dict[str, object] = {
        "scope": "s",
        "name": f"ds-{uuid.uuid4().hex[:6]}",
        "src_rse": "TAPE_A",
        "dest_rse": "DISK",
        "max_wait_s": 3600.0,
    }
    return CarouselRequest(**{**base, **fields})  # type: ignore[arg-type]


async def start(client: Client, queue: str, req: CarouselRequest) -> WorkflowHandle[object, CarouselState]:
    return await client.start_workflow(
        CAROUSEL_WORKFLOW,
        CarouselInput(req, {s.value: queue for s in Step}, POLICY),
        id=request_workflow_id(req.scope, req.name),
        task_queue=queue,
        result_type=CarouselState,
        start_signal=REQUEST_SIGNAL,
        start_signal_args=[req],
    )


async def run(env: WorkflowEnvironment, queue: str, w: World, req: CarouselRequest) -> CarouselState:
    async with Worker(env.client, task_queue=queue, workflows=[CarouselWorkflow], activities=stubs(w)):
        handle = await start(env.client, queue, req)
        return await handle.result()


async def test_one_message_per_file_while_open_then_dataset(env: WorkflowEnvironment, queue: str) -> None:
    w = World(files=["f1", "f2", "f3"], close_after=6, attach={2: ["f4"], 4: ["f5"]})
    req = request()
    got = await run(env, queue, w, req)
    files = w.messages(FILE_MESSAGE)
    names = [m["name"] for m in files]
    assert sorted(names) == ["f1", "f2", "f3", "f4", "f5"] and len(names) == 5
    assert names == got.announced
    rid = request_workflow_id(req.scope, req.name)
    assert [p.message_id for p in w.published if p.type == FILE_MESSAGE] == [
        message_id(rid, "s", n) for n in names
    ]
    [dataset] = w.messages(DATASET_MESSAGE)
    assert dataset["status"] == Status.FINISHED and dataset["files"] == 5
    assert (
        got.transform_status == Status.FINISHED and got.in_status == "Closed" and got.out_status == "Finished"
    )
    assert (got.in_total_files, got.in_processed_files, got.out_total_files, got.output_processed_files) == (
        5, 5, 5, 5,
    )  # fmt: skip
    assert got.requests == 1 and not got.adopted
    # Files attached to the rule's dataset later got locks of their own through the rule.
    assert len(w.rule_calls) == 1 and w.rule_calls[0].source_expression == "TAPE_A"


async def test_given_rule_adopted(env: WorkflowEnvironment, queue: str) -> None:
    w = World(files=["a", "b"], open=False)
    w.rules["existing"] = {"a": REPLICATING, "b": REPLICATING}
    got = await run(env, queue, w, request(rule_id="existing"))
    assert got.adopted and got.rule_ids == ["existing"]
    assert len(w.messages(FILE_MESSAGE)) == 2


async def test_stuck_lock_reruled_from_another_source(env: WorkflowEnvironment, queue: str) -> None:
    w = World(files=["a", "b", "c"], open=False, stuck={"b"}, sources=["TAPE_A", "TAPE_B"])
    got = await run(env, queue, w, request())
    assert [m["name"] for m in w.messages(FILE_MESSAGE)].count("b") == 1
    assert len(w.messages(FILE_MESSAGE)) == 3
    [rr] = w.reruled
    assert rr.files == ["b"] and "TAPE_A" in rr.excluded and "DISK" in rr.excluded
    assert got.sources == ["TAPE_A", "TAPE_B"] and got.stuck[0].reason == "STUCK lock"
    assert got.transform_status == Status.FINISHED


async def test_no_other_source_waits_for_operator_then_give_up(env: WorkflowEnvironment, queue: str) -> None:
    w = World(files=["a", "b"], open=False, stuck={"b"})
    async with Worker(env.client, task_queue=queue, workflows=[CarouselWorkflow], activities=stubs(w)):
        handle = await start(env.client, queue, request())

        async def waiting() -> CarouselState:
            while True:
                s = await handle.query("state", result_type=CarouselState)
                if s.operator is not None:
                    return s
                await env.sleep(1)

        s = await waiting()
        assert s.transform_status == Status.OPERATOR and s.stuck[-1].files == ["b"] and "TAPE_A" in s.operator
        await handle.signal(DECIDE_SIGNAL, Decision(GIVE_UP))
        got = await handle.result()
    assert [m["name"] for m in w.messages(FILE_MESSAGE)] == ["a"]
    assert got.transform_status == Status.SUBFINISHED and got.given_up == ["b"]
    assert (got.in_processed_files, got.out_total_files, got.output_processed_files) == (2, 1, 1)
    [dataset] = w.messages(DATASET_MESSAGE)
    assert dataset["not_staged"] == ["b"]


async def test_waiting_past_max_wait_is_stuck(env: WorkflowEnvironment, queue: str) -> None:
    w = World(files=["a"], open=False, sources=["TAPE_A", "TAPE_B"])
    # The rule never moves: a lock that stays REPLICATING.
    got_rule = stubs(w)

    @activity.defn(name=STEPS[Step.RULE].activity)
    async def frozen_rule(inp: RuleInput) -> RuleReceipt:
        w.rules["frozen"] = {}
        return RuleReceipt("frozen", adopted=False)

    async with Worker(
        env.client, task_queue=queue, workflows=[CarouselWorkflow], activities=[frozen_rule, *got_rule[1:]]
    ):
        got = await (await start(env.client, queue, request(max_wait_s=60.0))).result()
    assert got.stuck[0].reason.startswith("not available 60s") and got.sources[-1] == "TAPE_B"
    assert [m["name"] for m in w.messages(FILE_MESSAGE)] == ["a"]


async def test_cancelled_rule_recreated(env: WorkflowEnvironment, queue: str) -> None:
    w = World(files=["a", "b", "c", "d"], open=False, cancel_at=2)
    got = await run(env, queue, w, request())
    assert len(w.rule_calls) == 2 and w.rule_calls[1].rule_id is None
    assert sorted(m["name"] for m in w.messages(FILE_MESSAGE)) == ["a", "b", "c", "d"]
    assert len(w.messages(FILE_MESSAGE)) == 4 and got.rule_ids == ["rule-1"]


async def test_broker_refusing_delays_never_duplicates(env: WorkflowEnvironment, queue: str) -> None:
    w = World(files=["a", "b"], open=False, broker_down_for=3)
    got = await run(env, queue, w, request())
    assert [m["name"] for m in w.messages(FILE_MESSAGE)] == got.announced and len(got.announced) == 2
    assert len(w.messages(DATASET_MESSAGE)) == 1


async def test_second_request_joins_the_first(env: WorkflowEnvironment, queue: str) -> None:
    w = World(files=["a", "b"], close_after=4)
    req = request()
    async with Worker(env.client, task_queue=queue, workflows=[CarouselWorkflow], activities=stubs(w)):
        first = await start(env.client, queue, req)
        second = await start(env.client, queue, req)
        assert second.id == first.id
        got = await first.result()
    assert got.requests == 2 and len(w.rule_calls) == 1
    assert len(w.messages(FILE_MESSAGE)) == 2


async def test_operator_changes_the_source(env: WorkflowEnvironment, queue: str) -> None:
    """No other source holds the stuck file: the operator names one and the file stages from it."""
    w = World(files=["a", "b"], open=False, stuck={"b"})
    async with Worker(env.client, task_queue=queue, workflows=[CarouselWorkflow], activities=stubs(w)):
        handle = await start(env.client, queue, request())
        while (await handle.query("state", result_type=CarouselState)).operator is None:
            await env.sleep(1)
        await handle.signal(DECIDE_SIGNAL, Decision(CHANGE, src_rse="TAPE_X"))
        got = await handle.result()
    assert w.reruled[-1].source == "TAPE_X" and got.sources == ["TAPE_A", "TAPE_X"]
    assert sorted(got.announced) == ["a", "b"] and got.transform_status == Status.FINISHED
    assert got.decisions[0].endswith(CHANGE)


async def test_operator_changes_the_destination(env: WorkflowEnvironment, queue: str) -> None:
    """A new destination: a new dataset rule there; files already announced are not announced again."""
    w = World(files=["a", "b"], open=False, stuck={"b"})
    async with Worker(env.client, task_queue=queue, workflows=[CarouselWorkflow], activities=stubs(w)):
        handle = await start(env.client, queue, request())
        while (await handle.query("state", result_type=CarouselState)).operator is None:
            await env.sleep(1)
        w.stuck.clear()
        await handle.signal(DECIDE_SIGNAL, Decision(CHANGE, dest_rse="DISK2"))
        got = await handle.result()
    assert w.rule_calls[-1].dest_rse == "DISK2" and got.dest_rse == "DISK2"
    assert [m["name"] for m in w.messages(FILE_MESSAGE)] == ["a", "b"]
