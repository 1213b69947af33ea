"""The rawintegrity workflows' logic (workflows/rawintegrity.py) on the time-skipping test server.

Every activity is a stub under its real name over a fake world (online files, tape cache and tape,
Rucio replicas). The stub removal records what tape and Rucio held at the moment it was asked, so
each test can assert the safety rule: no online copy is removed unless tape holds the source's
adler32 and Rucio holds that replica. Failures are injected at every step, before and after its
side effect, as a killed worker leaves them (the attempt fails, Temporal runs it again).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.models import rawintegrity as r
from unembargo.models.names import SA_RAW_STATE, SA_STEP
from unembargo.workflows.rawintegrity import RawFileWorkflow, RegisterBatchWorkflow

RESULT_TIMEOUT = 120
RSE = "TAPE_UNIT"
# Short but real intervals: the time-skipping server jumps over them while a test awaits a result.
POLICY = r.RawPolicy(migration_first_s=60, migration_limit_s=6 * 3600, register_reply_s=600)


def lfn(i: int) -> str:
    return f"LHCb/2026/RAW/run000123/run000123_{i:04d}.raw"


def adler(i: int) -> str:
    return f"{0x10000000 + i:08x}"


@dataclass
class World:
    """The fake online storage, tape and Rucio, and every stub call's record."""

    online: dict[str, tuple[int, str]] = field(default_factory=dict)
    cache: dict[str, tuple[int, str]] = field(default_factory=dict)
    tape: dict[str, tuple[int, str]] = field(default_factory=dict)
    rucio: dict[str, tuple[int, str]] = field(default_factory=dict)
    # Tape status checks before a cache copy migrates; files that never do; migrations that corrupt.
    checks_to_migrate: int = 1
    never: set[str] = field(default_factory=set)
    corrupt: Counter[str] = field(default_factory=Counter)
    # (activity, point) -> attempts still to fail there ("acting": before the effect, "acted": after).
    crash: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Register attempts to fail (Rucio down); removal attempts refused (PermissionError).
    rucio_down: int = 0
    # Each registration request is sent twice (a resend after a lost answer, a retried activity).
    duplicate_requests: bool = False
    # Files whose online content changes after their first put (new size and checksum).
    changing: set[str] = field(default_factory=set)
    refuse_removal: int = 0
    # Replicas Rucio loses after registering them (a catalogue that cannot be trusted).
    forget: set[str] = field(default_factory=set)
    checks: Counter[str] = field(default_factory=Counter)
    puts: Counter[str] = field(default_factory=Counter)
    adds: Counter[str] = field(default_factory=Counter)
    batches: list[int] = field(default_factory=list)
    removed_online: list[str] = field(default_factory=list)
    unsafe_removals: list[str] = field(default_factory=list)

    def files(self, n: int) -> list[str]:
        names = [lfn(i) for i in range(n)]
        for i, name in enumerate(names):
            self.online[name] = (1000 + i, adler(i))
        return names

    def _crash(self, name: str, point: str) -> None:
        if self.crash[(name, point)] > 0:
            self.crash[(name, point)] -= 1
            raise RuntimeError(f"worker killed at {name}:{point}")

    def verified(self, name: str) -> bool:
        """The safety rule's condition: tape and Rucio both hold the online file's checksum."""
        want = self.online.get(name)
        return want is not None and self.tape.get(name) == want and self.rucio.get(name) == want

    def activities(self, client: Client) -> list[Any]:
        w = self

        @activity.defn(name=r.STEPS[r.Step.PUT].activity)
        async def put(inp: r.PutInput) -> r.PutReceipt:
            if inp.lfn in w.changing and w.puts[inp.lfn]:
                w.changing.discard(inp.lfn)
                w.online[inp.lfn] = (4321, "cafebabe")
            want = w.online.get(inp.lfn)
            if want is None:
                raise ApplicationError("gone", type="MissingOnline", non_retryable=True)
            if inp.lfn in w.tape or w.cache.get(inp.lfn) == want:
                return r.PutReceipt(*want, copied=False)
            w._crash("put", "acting")
            w.cache[inp.lfn] = want
            w.puts[inp.lfn] += 1
            w._crash("put", "acted")
            return r.PutReceipt(*want, copied=True)

        @activity.defn(name=r.STEPS[r.Step.TAPE].activity)
        async def tape(inp: r.TapeInput) -> r.TapeReceipt:
            w.checks[inp.lfn] += 1
            if inp.lfn in w.cache and inp.lfn not in w.never and w.checks[inp.lfn] >= w.checks_to_migrate:
                size, good = w.cache.pop(inp.lfn)
                bad = w.corrupt[inp.lfn] > 0
                w.corrupt[inp.lfn] -= bad
                w.tape[inp.lfn] = (size, "deadbeef" if bad else good)
            w._crash("tape", "acted")
            if inp.lfn not in w.tape:
                return r.TapeReceipt(migrated=False)
            size, found = w.tape[inp.lfn]
            return r.TapeReceipt(True, found, size, 5.0)

        @activity.defn(name=r.STEPS[r.Step.REMOVE_TAPE].activity)
        async def remove_tape(inp: r.RemoveTapeInput) -> r.RemovedReceipt:
            if w.tape.get(inp.lfn, (0, ""))[1] != inp.bad_adler32:
                return r.RemovedReceipt(False)
            w._crash("remove_tape", "acting")
            del w.tape[inp.lfn]
            w._crash("remove_tape", "acted")
            return r.RemovedReceipt(True)

        @activity.defn(name=r.STEPS[r.Step.REQUEST].activity)
        async def request(inp: r.RequestInput) -> r.RequestReceipt:
            w._crash("request", "acting")
            wid = r.batch_workflow_id(inp.rse)
            for _ in range(2 if w.duplicate_requests else 1):
                await client.start_workflow(
                    r.BATCH_WORKFLOW,
                    r.BatchInput(inp.rse, inp.queue, r.BatchPolicy(batches_per_run=2)),
                    id=wid,
                    task_queue=inp.workflow_queue,
                    start_signal=r.REGISTER_SIGNAL,
                    start_signal_args=[inp.request],
                )
            w._crash("request", "acted")
            return r.RequestReceipt(wid)

        @activity.defn(name=r.STEPS[r.Step.REGISTER].activity)
        async def register(inp: r.RegisterBatchInput) -> r.RegisterBatchReceipt:
            if w.rucio_down > 0:
                w.rucio_down -= 1
                raise ConnectionError("Rucio is not answering")
            added, already = [], []
            for f in inp.files:
                if w.rucio.get(f.lfn) == (f.size, f.adler32):
                    already.append(f.lfn)
                    continue
                w._crash("register", "acting")
                w.rucio[f.lfn] = (f.size, f.adler32)
                w.adds[f.lfn] += 1
                added.append(f.lfn)
            w.batches.append(len(inp.files))
            w._crash("register", "acted")
            for name in w.forget & set(added):
                del w.rucio[name]
            return r.RegisterBatchReceipt(added, already)

        @activity.defn(name=r.STEPS[r.Step.REMOVE_ONLINE].activity)
        async def remove_online(inp: r.RemoveOnlineInput) -> r.RemovedReceipt:
            if inp.lfn not in w.online:
                return r.RemovedReceipt(False)
            if not w.verified(inp.lfn):
                # The real activity refuses too; the test counts that the workflow asked at all.
                w.unsafe_removals.append(inp.lfn)
                raise ApplicationError(
                    "tape or Rucio lack the copy", type="RemovalUnsafe", non_retryable=True
                )
            if w.refuse_removal > 0:
                w.refuse_removal -= 1
                raise PermissionError("online system refused the removal")
            w._crash("remove_online", "acting")
            del w.online[inp.lfn]
            w.removed_online.append(inp.lfn)
            w._crash("remove_online", "acted")
            return r.RemovedReceipt(True)

        return [put, tape, remove_tape, request, register, remove_online]


def worker(env: WorkflowEnvironment, queue: str, world: World, cached: int = 1000) -> Worker:
    return Worker(
        env.client,
        task_queue=queue,
        workflows=[RawFileWorkflow, RegisterBatchWorkflow],
        activities=world.activities(env.client),
        # No cache: every task replays history, as on a worker that was restarted.
        max_cached_workflows=cached,
    )


async def start(
    env: WorkflowEnvironment, queue: str, name: str, policy: r.RawPolicy = POLICY
) -> WorkflowHandle:
    return await env.client.start_workflow(
        RawFileWorkflow.run,
        r.RawFileInput(
            name, "online", "tape", f"{RSE}_{queue}", {step.value: queue for step in r.Step}, queue, policy
        ),
        id=f"{r.file_workflow_id(name)}-{uuid.uuid4().hex[:6]}",
        task_queue=queue,
        execution_timeout=timedelta(days=30),
    )


async def all_done(env: WorkflowEnvironment, queue: str, names: list[str]) -> list[r.RawFileState]:
    """Start every file at once, then wait for each result in turn."""
    handles = await asyncio.gather(*(start(env, queue, n) for n in names))
    return [await h.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT)) for h in handles]


async def until(
    env: WorkflowEnvironment, handle: WorkflowHandle, step: str, skip: timedelta = timedelta(hours=1)
) -> r.RawFileState:
    """Skip time (``skip`` at a go) until the file's query shows ``step``."""
    for _ in range(200):
        got: r.RawFileState = await handle.query(RawFileWorkflow.state)
        if got.step == step:
            return got
        await env.sleep(skip)
    raise AssertionError(f"never reached {step}: {got}")


async def test_files_end_done_registered_in_one_batch(env: WorkflowEnvironment, queue: str) -> None:
    """Three files: put, migrated, verified, registered together, online removed, Done (state and SA)."""
    world = World()
    names = world.files(3)
    async with worker(env, queue, world):
        handles = [await start(env, queue, n) for n in names]
        results = [await h.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT)) for h in handles]
        described = await handles[0].describe()
    assert {s.state for s in results} == {r.State.DONE}
    assert world.online == {} and set(world.rucio) == set(names) and world.tape == world.rucio
    assert world.batches == [3] and set(world.adds.values()) == {1}
    assert not world.unsafe_removals
    assert described.typed_search_attributes.get(SA_RAW_STATE) == "Done"
    assert described.typed_search_attributes.get(SA_STEP) == r.STEP_DONE
    assert results[0].migration_checks == 1 and results[0].migration_s == 5.0


async def test_batches_of_at_most_100_each_file_added_once(env: WorkflowEnvironment, queue: str) -> None:
    """201 files: Rucio sees batches of at most 100 (the batcher continues as new), each file once."""
    world = World()
    names = world.files(201)
    async with worker(env, queue, world):
        await all_done(env, queue, names)
    assert max(world.batches) <= 100 and sum(world.batches) == 201
    assert len(world.batches) <= 5
    assert world.adds == Counter({n: 1 for n in names})
    assert world.online == {} and not world.unsafe_removals


async def test_duplicate_requests_register_each_file_once(env: WorkflowEnvironment, queue: str) -> None:
    """Every request arrives twice: the batcher keys by LFN and Rucio gets one add per file."""
    world = World(duplicate_requests=True)
    names = world.files(101)
    async with worker(env, queue, world):
        await all_done(env, queue, names)
    assert world.adds == Counter({n: 1 for n in names}) and max(world.batches) <= 100
    assert sum(world.batches) < 2 * len(names)


async def test_a_bad_tape_copy_is_removed_and_the_file_transferred_again(
    env: WorkflowEnvironment, queue: str
) -> None:
    world = World()
    [name] = world.files(1)
    world.corrupt[name] = 1
    async with worker(env, queue, world):
        got = await (await start(env, queue, name)).result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert got.state == r.State.DONE and got.transfers == 2
    assert [m.found for m in got.mismatches] == ["deadbeef (1000 bytes)"]
    assert world.puts[name] == 2 and world.tape[name] == (1000, adler(0)) and not world.unsafe_removals


async def test_always_bad_copies_wait_for_an_operator_who_retries(
    env: WorkflowEnvironment, queue: str
) -> None:
    """max_transfers bad copies: the file waits with the evidence, online kept; retry then succeeds."""
    world = World()
    [name] = world.files(1)
    world.corrupt[name] = 3
    async with worker(env, queue, world):
        handle = await start(env, queue, name)
        waiting = await until(env, handle, r.WAITING_OPERATOR)
        assert waiting.operator is not None and waiting.operator.startswith("TapeChecksumMismatch")
        assert len(waiting.mismatches) == 3 and waiting.state == r.State.ACTIVE
        assert name in world.online and name not in world.tape and name not in world.rucio
        assert (await handle.describe()).typed_search_attributes.get(SA_STEP) == r.WAITING_OPERATOR
        await handle.signal(RawFileWorkflow.decide, r.RETRY)
        got = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert got.state == r.State.DONE and got.transfers == 4 and len(got.decisions) == 1


async def test_an_operator_gives_up_and_the_online_copy_stays(env: WorkflowEnvironment, queue: str) -> None:
    world = World()
    [name] = world.files(1)
    world.corrupt[name] = 10
    async with worker(env, queue, world):
        handle = await start(env, queue, name)
        await until(env, handle, r.WAITING_OPERATOR)
        await handle.signal(RawFileWorkflow.decide, r.GIVE_UP)
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
        state = await handle.query(RawFileWorkflow.state)
        described = await handle.describe()
    assert isinstance(failed.value.cause, ApplicationError) and failed.value.cause.type == "GivenUp"
    assert state.state == r.State.FAILED and described.typed_search_attributes.get(SA_RAW_STATE) == "Failed"
    assert name in world.online and not world.removed_online


async def test_a_file_that_never_migrates_waits_for_an_operator(env: WorkflowEnvironment, queue: str) -> None:
    """Durable timers with growing intervals up to migration_limit_s, then NeverMigrated; online kept."""
    world = World()
    [name] = world.files(1)
    world.never.add(name)
    async with worker(env, queue, world):
        handle = await start(env, queue, name)
        waiting = await until(env, handle, r.WAITING_OPERATOR)
        assert waiting.operator is not None and waiting.operator.startswith("NeverMigrated")
        # 60 s doubling to a 1 h cap over 6 h: a handful of checks, not one a minute.
        assert 5 <= waiting.migration_checks <= 12
        assert name in world.online and name in world.cache
        world.never.clear()
        await handle.signal(RawFileWorkflow.decide, r.RETRY)
        got = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert got.state == r.State.DONE and world.puts[name] == 1


async def test_a_source_changed_between_transfers_waits_then_goes_as_it_is(
    env: WorkflowEnvironment, queue: str
) -> None:
    """The online file changes after a bad copy: SourceChanged for an operator; retry sends the new
    content, and the old tape copy is never taken for it."""
    world = World()
    [name] = world.files(1)
    world.corrupt[name] = 1
    world.changing.add(name)
    async with worker(env, queue, world):
        handle = await start(env, queue, name)
        waiting = await until(env, handle, r.WAITING_OPERATOR)
        assert waiting.operator is not None and waiting.operator.startswith("SourceChanged")
        await handle.signal(RawFileWorkflow.decide, r.RETRY)
        got = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert got.state == r.State.DONE and (got.size, got.adler32) == (4321, "cafebabe")
    assert world.rucio[name] == (4321, "cafebabe") and not world.unsafe_removals


async def test_catalogue_down_then_back(env: WorkflowEnvironment, queue: str) -> None:
    """Rucio down for several attempts: files wait Copied (online kept), then end Done."""
    world = World(rucio_down=4)
    names = world.files(2)
    async with worker(env, queue, world):
        handles = [await start(env, queue, n) for n in names]
        results = [await h.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT)) for h in handles]
    assert {s.state for s in results} == {r.State.DONE} and world.rucio_down == 0
    assert not world.unsafe_removals and world.adds == Counter({n: 1 for n in names})


async def test_removal_refused_then_allowed(env: WorkflowEnvironment, queue: str) -> None:
    """The online system refuses the removal a few times: retried, the file stays Registered, then Done."""
    world = World(refuse_removal=3)
    [name] = world.files(1)
    async with worker(env, queue, world):
        got = await (await start(env, queue, name)).result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert got.state == r.State.DONE and world.refuse_removal == 0 and world.removed_online == [name]


async def test_a_replica_rucio_lost_blocks_the_removal(env: WorkflowEnvironment, queue: str) -> None:
    """Registered, but the replica is gone when removal checks: RemovalUnsafe, operator, online kept."""
    world = World()
    [name] = world.files(1)
    world.forget.add(name)
    async with worker(env, queue, world):
        handle = await start(env, queue, name)
        waiting = await until(env, handle, r.WAITING_OPERATOR)
        assert waiting.operator is not None and waiting.operator.startswith("RemovalUnsafe")
        assert waiting.state == r.State.REGISTERED and name in world.online
        await handle.signal(RawFileWorkflow.decide, r.GIVE_UP)
        with pytest.raises(WorkflowFailureError):
            await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert name in world.online and not world.removed_online


CRASH_POINTS = [
    (name, point)
    for name in ("put", "tape", "remove_tape", "request", "register", "remove_online")
    for point in ("acting", "acted")
    if (name, point) != ("tape", "acting")
]


@pytest.mark.parametrize(("name", "point"), CRASH_POINTS, ids=[f"{n}:{p}" for n, p in CRASH_POINTS])
async def test_a_crash_at_every_point_never_removes_an_unverified_online_copy(
    env: WorkflowEnvironment, queue: str, name: str, point: str
) -> None:
    """Each step fails once before, and once after, its side effect; the file still ends Done with
    one tape copy and one replica, and removal was only ever asked of a verified, registered file."""
    world = World()
    files = world.files(2)
    # The bad copy makes remove_tape run; the others run anyway.
    world.corrupt[files[0]] = 1
    world.crash[(name, point)] = 1
    async with worker(env, queue, world):
        handles = [await start(env, queue, n) for n in files]
        results = [await h.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT)) for h in handles]
    assert world.crash[(name, point)] == 0, "the crash point was not reached"
    assert {s.state for s in results} == {r.State.DONE}
    assert not world.unsafe_removals and sorted(world.removed_online) == sorted(files)
    assert world.adds == Counter({n: 1 for n in files})
    assert all(world.tape[n] == (1000 + i, adler(i)) for i, n in enumerate(files))


async def test_a_restarted_worker_resumes_the_file(env: WorkflowEnvironment, queue: str) -> None:
    """The workflow worker stops while a file waits for migration; a new one replays and finishes."""
    world = World()
    [name] = world.files(1)
    world.never.add(name)
    async with worker(env, queue, world, cached=0):
        handle = await start(env, queue, name)
        await until(env, handle, r.WAITING_MIGRATION, timedelta(seconds=1))
        world.never.clear()
    async with worker(env, queue, world, cached=0):
        got = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert got.state == r.State.DONE and world.puts[name] == 1 and not world.unsafe_removals


async def test_decisions_are_ignored_unless_an_operator_is_asked(
    env: WorkflowEnvironment, queue: str
) -> None:
    """A stray give_up while the file is fine changes nothing: it still ends Done, never regressed."""
    world = World()
    [name] = world.files(1)
    world.never.add(name)
    async with worker(env, queue, world):
        handle = await start(env, queue, name)
        await until(env, handle, r.WAITING_MIGRATION, timedelta(seconds=1))
        world.never.clear()
        await handle.signal(RawFileWorkflow.decide, r.GIVE_UP)
        got = await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
    assert got.state == r.State.DONE and got.decisions == []


async def test_histories_replay_on_todays_code(env: WorkflowEnvironment, queue: str) -> None:
    """A file's history (a bad copy, an operator's retry) and its batcher's replay deterministically."""
    from temporalio.worker import Replayer

    world = World()
    [name] = world.files(1)
    world.corrupt[name] = 2
    policy = r.RawPolicy(max_transfers=2, migration_first_s=60)
    async with worker(env, queue, world):
        handle = await start(env, queue, name, policy)
        await until(env, handle, r.WAITING_OPERATOR)
        await handle.signal(RawFileWorkflow.decide, r.RETRY)
        await handle.result(rpc_timeout=timedelta(seconds=RESULT_TIMEOUT))
        batcher = env.client.get_workflow_handle(r.batch_workflow_id(f"{RSE}_{queue}"))
        histories = [await handle.fetch_history(), await batcher.fetch_history()]
    replayer = Replayer(workflows=[RawFileWorkflow, RegisterBatchWorkflow])
    for history in histories:
        await replayer.replay_workflow(history)
