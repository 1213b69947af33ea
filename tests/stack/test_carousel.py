"""The carousel flow end to end on the real stack: datasets of small files with replicas at tape
RSEs of the real Rucio, staged by rules to a disk RSE. The stack's stand-in for FTS3
(devstack/carousel_copy.py) copies each file in turn, checks its adler32 and marks the replica
available; Rucio's own judge-evaluator gives files attached to an open dataset their locks, and
its judge-cleaner removes a deleted rule; a real worker reads the rules' locks and publishes one
message per file to the real embedded STOMP broker, where a real subscription receives them.

What only the unit layer proves (tests/unit/test_carousel_workflow.py, time-skipping server):
max-wait with no source left, an operator's decisions, the throttle's continue-as-new.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from rucio.common.exception import RuleNotFound
from temporalio.client import Client

from support import WorkerProcess, carousel_location, effects, poll_until, stack_settings
from unembargo.adapters import carousel_rucio
from unembargo.adapters.stomp import Frame, StompConnection
from unembargo.client import carousel as api
from unembargo.devstack import broker, carousel_copy, postgres, procs, rucio_server
from unembargo.models.carousel import (
    DATASET_MESSAGE,
    FILE_MESSAGE,
    CarouselPolicy,
    CarouselRequest,
    CarouselSettings,
    CarouselState,
    Status,
    message_id,
    request_workflow_id,
)
from unembargo.models.carousel_throttle import ThrottleLimits
from unembargo.models.settings import Settings

FILES = 10
# The broker's outage in test_broker_down_for_a_minute_then_delivered.
BROKER_DOWN_S = 60.0
POLICY = CarouselPolicy(poll_first_s=0.3, poll_backoff=1.5, poll_max_s=1.0, heartbeat_s=10.0)


@dataclass
class Carousel:
    settings: Settings
    rucio: Any
    scope: str
    # Two tapes hold every file; the flow stages from the first unless a file is stuck there.
    tape_rse: str
    other_tape: str
    disk_rse: str
    queues: dict[str, str]
    destination: str
    port: int
    location: str
    markers: Path
    broker: Any = None
    worker: WorkerProcess | None = None

    def start_broker(self) -> None:
        self.broker, _ = broker.start_thread(self.port)

    def stop_broker(self) -> None:
        broker.stop_thread(self.broker)

    def start_worker(self, **env: str) -> None:
        self.worker = WorkerProcess(
            self.settings, [self.location], env={"UNEMBARGO_CAROUSEL_BROKER_PORT": str(self.port), **env}
        )

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def policy(self, suffix: str, **fields: Any) -> CarouselPolicy:
        return CarouselPolicy(**{**POLICY.__dict__, "destination": f"{self.destination}-{suffix}", **fields})


@pytest.fixture(scope="module")
def carousel(
    module_settings: Settings, rucio: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Carousel]:
    """Two tape RSEs and a disk RSE (file protocols under this module's folders), a processing
    location serving staging and monitoring, the embedded broker, and a worker."""
    settings = module_settings
    tag = uuid.uuid4().hex[:6]
    root = tmp_path_factory.mktemp("carousel")
    scope = settings.rucio_scope
    tape_rse, other_tape, disk_rse = f"CTAPE_{tag.upper()}", f"CTAPE2_{tag.upper()}", f"CDISK_{tag.upper()}"
    for rse in (tape_rse, other_tape):
        rucio.add_rse(rse, deterministic=True, rse_type="TAPE")
    for rse in (tape_rse, other_tape, disk_rse):
        folder = root / rse / scope
        folder.mkdir(parents=True)
        rucio_server.ensure_rse(rucio, rse, folder)
        rucio.set_local_account_limit(settings.rucio_account, rse, 10**12)
    name = f"carousel-{tag}"
    queues = carousel_location(settings, name, f"csite-{tag}", f"c{tag}", root / disk_rse / scope)
    [port] = procs.free_ports(1)
    markers = root / "crash-markers"
    markers.mkdir()
    c = Carousel(settings, rucio, scope, tape_rse, other_tape, disk_rse, queues, f"/queue/carousel-{tag}",
                 port, name, markers)  # fmt: skip
    c.start_broker()
    c.start_worker()
    try:
        yield c
    finally:
        c.stop_worker()
        c.stop_broker()


@pytest.fixture(scope="module")
async def client(module_settings: Settings) -> Client:
    """A Temporal client of the module's own namespace (its worker's)."""
    s = module_settings
    return await Client.connect(s.temporal_address, namespace=s.temporal_namespace)


def tape_files(c: Carousel, dataset: str, first: int, count: int) -> dict[str, str]:
    """Small files ``dataset.fNNN`` written at both tape RSEs and registered there; name -> adler32."""
    rnd = random.Random()
    sums = {}
    replicas = []
    for i in range(first, first + count):
        name = f"{dataset}.f{i:03d}"
        data = rnd.randbytes(rnd.randrange(512, 4096))
        for rse in (c.tape_rse, c.other_tape):
            path = rucio_server.pfn_path(c.rucio, rse, c.scope, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        sums[name] = f"{zlib.adler32(data):08x}"
        replicas.append({"scope": c.scope, "name": name, "bytes": len(data), "adler32": sums[name]})
    for rse in (c.tape_rse, c.other_tape):
        c.rucio.add_replicas(rse=rse, files=replicas)
    return sums


def attach(c: Carousel, dataset: str, names: list[str]) -> None:
    c.rucio.attach_dids(c.scope, dataset, [{"scope": c.scope, "name": n} for n in names])


def tape_dataset(c: Carousel, files: int, close: bool = True) -> tuple[str, dict[str, str]]:
    """A dataset of small files at both tape RSEs (closed unless told); name -> adler32."""
    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    sums = tape_files(c, dataset, 0, files)
    c.rucio.add_dataset(c.scope, dataset)
    attach(c, dataset, sorted(sums))
    if close:
        c.rucio.set_status(c.scope, dataset, open=False)
    return dataset, sums


def dataset_rules(c: Carousel, dataset: str) -> list[dict[str, Any]]:
    return list(c.rucio.list_replication_rules(filters={"scope": c.scope, "name": dataset}))


def messages(sub: StompConnection, until: int, timeout: float = 60.0) -> list[Frame]:
    got: list[Frame] = []
    while len(got) < until and (frame := sub.receive(timeout)) is not None:
        got.append(frame)
    return got


async def wait_state(client: Client, c: Carousel, dataset: str, check: Any, what: str) -> CarouselState:
    found: list[CarouselState] = []

    async def ok() -> bool:
        found[:] = [await api.state(client, c.scope, dataset)]
        return bool(check(found[0]))

    await poll_until(ok, 60, what)
    return found[0]


async def test_stage_dataset_one_message_per_file_in_availability_order(
    carousel: Carousel, client: Client
) -> None:
    c = carousel
    dataset, sums = tape_dataset(c, FILES)
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-main")
        req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, max_wait_s=3600.0)
        policy = c.policy("main")
        handle = await api.stage(client, c.settings, c.queues, req, policy)
        assert handle.id == request_workflow_id(c.scope, dataset)

        async def ruled() -> bool:
            s = await api.state(client, c.scope, dataset)
            return bool(s.rule_ids) and s.in_total_files == FILES

        await poll_until(ruled, 60, "the request's rule and first lock check")
        [rule_id] = (await api.state(client, c.scope, dataset)).rule_ids
        rule = c.rucio.get_replication_rule(rule_id)
        assert (rule["copies"], rule["grouping"], rule["source_replica_expression"]) == (
            1,
            "DATASET",
            c.tape_rse,
        )
        # The stand-in transfer tool stages the files one by one, in an order of its own.
        order = carousel_copy.waiting(c.rucio, rule_id)
        assert len(order) == FILES
        random.shuffle(order)
        received: list[Frame] = []
        for i, name in enumerate(order):
            if i == FILES // 2:
                # A second request for the same dataset, half of it announced, joins the first:
                # the same workflow, no second rule, no file announced again.
                again = await api.stage(client, c.settings, c.queues, req, policy)
                assert (again.id, again.result_run_id) == (handle.id, handle.result_run_id)
                await wait_state(client, c, dataset, lambda s: s.requests == 2, "the second request joined")
            carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
            received += messages(sub, 1, 30)
        received += messages(sub, 1, 30)  # the dataset's
        assert sub.receive(1.0) is None  # nothing more, nothing twice
    files = [f for f in received if f.headers["type"] == FILE_MESSAGE]
    bodies = [json.loads(f.body) for f in files]
    assert [b["name"] for b in bodies] == order
    rid = request_workflow_id(c.scope, dataset)
    assert [f.headers["msg_id"] for f in files] == [message_id(rid, c.scope, n) for n in order]
    assert all(f.headers["persistent"] == "true" for f in files)
    for b in bodies:
        assert b["status"] == "Available" and b["rse"] == c.disk_rse
        data = Path(b["path"]).read_bytes()
        assert f"{zlib.adler32(data):08x}" == sums[b["name"]] == b["adler32"]
    [done] = [json.loads(f.body) for f in received if f.headers["type"] == DATASET_MESSAGE]
    assert done["status"] == Status.FINISHED and done["files"] == FILES
    final: CarouselState = await handle.result()
    assert final.transform_status == Status.FINISHED and final.requests == 2
    counters = (final.in_processed_files, final.out_total_files, final.output_processed_files)
    assert final.in_total_files == FILES and counters == (FILES, FILES, FILES)
    assert c.rucio.get_replication_rule(rule_id)["state"] == "OK"
    assert [r["id"] for r in dataset_rules(c, dataset)] == [rule_id]


@pytest.mark.parametrize("given", [False, True], ids=["found", "given-by-id"])
async def test_adopts_an_existing_rule(carousel: Carousel, client: Client, given: bool) -> None:
    """A rule made before the request is adopted, not doubled: found by account and RSE
    expression, or given by id."""
    c = carousel
    dataset, _ = tape_dataset(c, 2)
    [existing] = c.rucio.add_replication_rule(
        [{"scope": c.scope, "name": dataset}], 1, c.disk_rse, source_replica_expression=c.tape_rse
    )
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, rule_id=existing if given else None)
    handle = await api.stage(client, c.settings, c.queues, req, c.policy("adopt"))
    check = lambda s: s.rule_ids == [existing] and s.in_total_files == 2  # noqa: E731
    await wait_state(client, c, dataset, check, "the existing rule adopted")
    for name in carousel_copy.waiting(c.rucio, existing):
        carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
    final: CarouselState = await handle.result()
    assert final.adopted and final.output_processed_files == 2
    assert [r["id"] for r in dataset_rules(c, dataset)] == [existing]


class RivalBetweenFindAndCreate:
    """The real Rucio client, except that another party's create of the same rule (same account,
    DID and RSE expression) lands just after this client's first look for it, as when two creates
    race or a create's answer was lost: Rucio itself then answers DuplicateRule."""

    def __init__(self, client: Any, rule: dict[str, Any]) -> None:
        self.client, self.rule = client, rule
        self.rival: str | None = None
        self.duplicate_rule = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def list_replication_rules(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        found = list(self.client.list_replication_rules(filters=filters))
        if self.rival is None:
            [self.rival] = self.client.add_replication_rule(**self.rule)
        return found

    def add_replication_rule(self, *args: Any, **kwargs: Any) -> list[str]:
        from rucio.common.exception import DuplicateRule

        try:
            return list(self.client.add_replication_rule(*args, **kwargs))
        except DuplicateRule:
            self.duplicate_rule += 1
            raise


def test_duplicate_rule_adopts_the_rival(carousel: Carousel) -> None:
    """No rule when the rule step looks, one when it creates: the real Rucio answers DuplicateRule,
    and the rule step adopts the rule that exists (found by account and RSE expression) instead
    of making a second one."""
    c = carousel
    dataset, _ = tape_dataset(c, 2)
    did = [{"scope": c.scope, "name": dataset}]
    rule = {"dids": did, "copies": 1, "rse_expression": c.disk_rse, "grouping": "DATASET"}
    racing = RivalBetweenFindAndCreate(c.rucio, {**rule, "source_replica_expression": c.tape_rse})
    got = carousel_rucio.adopt_or_create(
        racing,
        c.settings.rucio_account,
        c.scope,
        dataset,
        c.disk_rse,
        c.tape_rse,
    )
    assert racing.duplicate_rule == 1 and got == (racing.rival, True)
    assert [r["id"] for r in dataset_rules(c, dataset)] == [racing.rival]


async def test_stuck_file_reruled_from_the_other_tape(carousel: Carousel, client: Client) -> None:
    """A file the first tape never delivers is stuck after max-wait: a rule for it from the other
    tape (which holds it) stages it, and it is announced once."""
    c = carousel
    dataset, _ = tape_dataset(c, 3)
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, max_wait_s=4.0)
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-stuck")
        handle = await api.stage(client, c.settings, c.queues, req, c.policy("stuck"))
        s = await wait_state(client, c, dataset, lambda s: s.in_total_files == 3, "the first lock check")
        first, *rest = carousel_copy.waiting(c.rucio, s.rule_ids[0])
        for name in rest:
            carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
        s = await wait_state(client, c, dataset, lambda s: len(s.sources) == 2, "a re-rule of the stuck file")
        assert s.sources == [c.tape_rse, c.other_tape] and s.stuck[0].files == [first]
        [file_rule] = s.rule_ids[1:]
        assert c.rucio.get_replication_rule(file_rule)["source_replica_expression"] == c.other_tape
        carousel_copy.stage_file(c.rucio, c.scope, first, c.other_tape, c.disk_rse)
        got = messages(sub, 4, 30)
    final: CarouselState = await handle.result()
    names = [json.loads(f.body)["name"] for f in got if f.headers["type"] == FILE_MESSAGE]
    assert sorted(names) == sorted([first, *rest]) and names[-1] == first
    assert final.transform_status == Status.FINISHED and final.output_processed_files == 3


@contextmanager
def rucio_db() -> Iterator[psycopg.Connection[Any]]:
    """The stack's Rucio database, for what Rucio's API neither shows nor sets."""
    base = stack_settings()
    admin = urlsplit(postgres.url(base))
    database = rucio_server.RucioPaths.of(base).database
    with psycopg.connect(urlunsplit(("postgresql", admin.netloc, f"/{database}", admin.query, ""))) as conn:
        yield conn


def evaluated(c: Carousel, dataset: str) -> bool:
    """True once Rucio's judge-evaluator has taken up every attach to the dataset."""
    with rucio_db() as conn:
        row = conn.execute(
            "SELECT count(*) FROM updated_dids WHERE scope = %s AND name = %s", (c.scope, dataset)
        ).fetchone()
    return row is not None and row[0] == 0


def set_lock_stuck(c: Carousel, rule_id: str, name: str) -> None:
    """Mark one lock of a rule STUCK as Rucio's conveyor does when a file's transfers fail for good
    (the lock and its rule's counters and state), in the stack's Rucio database: the stack's
    transfers never fail, and Rucio's API has no call that sets a lock's state."""
    with rucio_db() as conn, conn.transaction():
        locked = conn.execute(
            "UPDATE locks SET state = 'S' WHERE rule_id = %s AND name = %s AND state = 'R'", (rule_id, name)
        )
        assert locked.rowcount == 1
        conn.execute(
            "UPDATE rules SET state = 'S', locks_stuck_cnt = locks_stuck_cnt + 1, "
            "locks_replicating_cnt = locks_replicating_cnt - 1 WHERE id = %s",
            (rule_id,),
        )


async def test_stuck_lock_reruled_at_once(carousel: Carousel, client: Client) -> None:
    """A lock Rucio marks STUCK is re-ruled from the other tape at once, long before max-wait; the
    file is staged from there and announced once."""
    c = carousel
    dataset, _ = tape_dataset(c, 3)
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, max_wait_s=3600.0)
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-stucklock")
        handle = await api.stage(client, c.settings, c.queues, req, c.policy("stucklock"))
        s = await wait_state(client, c, dataset, lambda s: s.in_total_files == 3, "the first lock check")
        rule_id = s.rule_ids[0]
        stuck, *rest = carousel_copy.waiting(c.rucio, rule_id)
        for name in rest:
            carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
        got = messages(sub, 2, 30)
        set_lock_stuck(c, rule_id, stuck)
        s = await wait_state(client, c, dataset, lambda s: len(s.sources) == 2, "a re-rule of the STUCK lock")
        assert s.sources == [c.tape_rse, c.other_tape]
        assert [(x.files, x.source, x.reason) for x in s.stuck] == [([stuck], c.tape_rse, "STUCK lock")]
        [file_rule] = s.rule_ids[1:]
        assert c.rucio.get_replication_rule(file_rule)["source_replica_expression"] == c.other_tape
        carousel_copy.stage_file(c.rucio, c.scope, stuck, c.other_tape, c.disk_rse)
        got += messages(sub, 2, 30)
        assert sub.receive(1.0) is None
    final: CarouselState = await handle.result()
    names = [json.loads(f.body)["name"] for f in got if f.headers["type"] == FILE_MESSAGE]
    assert names == [*rest, stuck] == final.announced
    assert final.transform_status == Status.FINISHED and final.output_processed_files == 3


async def test_cancelled_rule_recreated(carousel: Carousel, client: Client) -> None:
    """The dataset's rule deleted in Rucio while staging (Rucio's deletion sets it to expire within
    the hour; its lifetime set to 0 brings that forward, and the stack's judge-cleaner removes it):
    the flow finds it gone, creates the dataset's rule again from its first source, and each file
    is announced once, those announced before the cancel never again."""
    c = carousel
    dataset, _ = tape_dataset(c, 3)
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, max_wait_s=3600.0)
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-cancel")
        handle = await api.stage(client, c.settings, c.queues, req, c.policy("cancel"))
        s = await wait_state(client, c, dataset, lambda s: s.in_total_files == 3, "the first lock check")
        [cancelled] = s.rule_ids
        first, *rest = carousel_copy.waiting(c.rucio, cancelled)
        carousel_copy.stage_file(c.rucio, c.scope, first, c.tape_rse, c.disk_rse)
        got = messages(sub, 1, 30)
        c.rucio.delete_replication_rule(cancelled)
        c.rucio.update_replication_rule(cancelled, {"lifetime": 0})
        s = await wait_state(
            client, c, dataset, lambda s: s.rule_ids and s.rule_ids[0] != cancelled, "the rule made again"
        )
        with pytest.raises(RuleNotFound):
            c.rucio.get_replication_rule(cancelled)
        [again] = s.rule_ids
        rule = c.rucio.get_replication_rule(again)
        assert (rule["grouping"], rule["source_replica_expression"]) == ("DATASET", c.tape_rse)
        # The file staged before the cancel is still on disk: the new rule's lock is OK at once.
        assert carousel_copy.waiting(c.rucio, again) == rest
        for name in rest:
            carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
        got += messages(sub, 3, 30)
        assert sub.receive(1.0) is None
    final: CarouselState = await handle.result()
    names = [json.loads(f.body)["name"] for f in got if f.headers["type"] == FILE_MESSAGE]
    assert names == [first, *rest] == final.announced
    assert final.transform_status == Status.FINISHED and final.rule_ids == [again]
    assert [r["id"] for r in dataset_rules(c, dataset)] == [again]


async def test_open_dataset_files_attached_later(carousel: Carousel, client: Client) -> None:
    """Files attached to the open dataset after its rule was made get the rule's locks from Rucio's
    judge-evaluator, are staged and announced; the request finishes only once the dataset is
    closed and every file is announced."""
    c = carousel
    dataset, _ = tape_dataset(c, 2, close=False)
    # The evaluator takes up the dataset's first attach before the rule is made: one that finds the
    # dataset locked by a rule being made pauses it for 1 to 10 minutes (Rucio's own back-off),
    # and the files attached later would get their locks only then.
    await poll_until(lambda: evaluated(c, dataset), 60, "the evaluator to take up the first attach")
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, max_wait_s=3600.0)
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-open")
        handle = await api.stage(client, c.settings, c.queues, req, c.policy("open"))
        s = await wait_state(client, c, dataset, lambda s: s.in_total_files == 2, "the first lock check")
        [rule_id] = s.rule_ids
        first = carousel_copy.waiting(c.rucio, rule_id)
        for name in first:
            carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
        got = messages(sub, 2, 30)
        later = sorted(tape_files(c, dataset, 2, 2))
        attach(c, dataset, later)
        await poll_until(
            lambda: carousel_copy.waiting(c.rucio, rule_id) == later, 60, "locks for the files attached"
        )
        for name in later:
            carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
        got += messages(sub, 2, 30)
        s = await wait_state(client, c, dataset, lambda s: s.output_processed_files == 4, "four announced")
        assert (s.transform_status, s.in_status, s.out_status) == (
            Status.TRANSFORMING,
            "Processing",
            "Processing",
        )
        assert sub.receive(2.0) is None  # no dataset message while the dataset is open
        c.rucio.set_status(c.scope, dataset, open=False)
        got += messages(sub, 1, 30)
        assert sub.receive(1.0) is None
    final: CarouselState = await handle.result()
    names = [json.loads(f.body)["name"] for f in got if f.headers["type"] == FILE_MESSAGE]
    assert names == [*first, *later] == final.announced
    [done] = [json.loads(f.body) for f in got if f.headers["type"] == DATASET_MESSAGE]
    assert done["files"] == 4 and final.in_status == "Closed" and final.out_status == "Finished"
    # The dataset's own rule staged them all: no file waited for max-wait and a re-rule.
    assert final.rule_ids == [rule_id] and final.sources == [c.tape_rse] and not final.stuck


async def test_throttled_tape_never_more_than_n_staging(carousel: Carousel, client: Client) -> None:
    """Two requests from one tape throttled to two files staging at once: never more than two of
    their files' rules in flight in Rucio (and two at first), the higher priority granted the
    slots freed until it has all its files, both finish with each file announced once."""
    c = carousel
    limit = 2
    low, low_sums = tape_dataset(c, 3)
    high, high_sums = tape_dataset(c, 3)
    config = CarouselSettings(throttles={c.tape_rse: ThrottleLimits(staging=limit)})
    policy = c.policy("throttle")
    files = {**low_sums, **high_sums}
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-throttle")
        handles = [
            await api.stage(
                client,
                c.settings,
                c.queues,
                CarouselRequest(c.scope, ds, c.tape_rse, c.disk_rse, max_wait_s=3600.0, priority=p),
                policy,
                config,
            )  # fmt: skip
            for ds, p in ((low, 0), (high, 5))
        ]

        async def both_asked() -> bool:
            return len((await api.throttle_state(client, c.tape_rse)).askers) == 2

        await poll_until(both_asked, 60, "both requests at the tape's throttle")
        rid = {request_workflow_id(c.scope, ds): ds for ds in (low, high)}
        staged: list[str] = []
        # What the throttle had granted each dataset, at each round of the loop below.
        shares: list[dict[str, int]] = []

        def in_flight() -> list[str]:
            rules = c.rucio.list_replication_rules(filters={"scope": c.scope, "rse_expression": c.disk_rse})
            flying = sorted(r["name"] for r in rules if r["name"] in files and r["state"] != "OK")
            assert len(flying) <= limit, flying
            return flying

        # The first grant fills the tape: two files' rules in flight before anything stages.
        await poll_until(lambda: len(in_flight()) == limit, 60, "the tape's two slots taken")

        async def stage_one() -> bool:
            throttle = await api.throttle_state(client, c.tape_rse)
            shares.append({rid[a.request_id]: a.granted for a in throttle.askers})
            flying = in_flight()
            if flying:
                name = random.choice(flying)
                carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
                staged.append(name)
            return len(staged) == len(files)

        await poll_until(stage_one, 120, "every file staged through the throttle")
        got = messages(sub, len(files) + 2, 30)
        assert sub.receive(1.0) is None
    finals: list[CarouselState] = [await h.result() for h in handles]
    assert sorted(staged) == sorted(files)
    # Slots freed go to the higher priority until it has all its files: whenever the low request
    # had its last file granted, the high one had all three (or was done).
    low_last = [share for share in shares if share.get(low) == 3]
    assert low_last and all(share.get(high, 3) == 3 for share in low_last), shares
    ids = [f.headers["msg_id"] for f in got if f.headers["type"] == FILE_MESSAGE]
    assert len(ids) == len(set(ids)) == len(files)
    for final, sums in zip(finals, (low_sums, high_sums), strict=True):
        assert final.transform_status == Status.FINISHED and sorted(final.announced) == sorted(sums)
        assert final.throttle is not None and dataset_rules(c, final.name) == []
    assert (await api.throttle_state(client, c.tape_rse)).peak_staging <= limit


async def publish_attempts(handle: Any) -> tuple[int, str]:
    """The pending publish's attempt and the type of its last failure ((0, '') if none pends)."""
    for p in (await handle.describe()).raw_description.pending_activities:
        if p.activity_type.name == "carousel_publish":
            return p.attempt, p.last_failure.application_failure_info.type
    return 0, ""


async def test_broker_down_for_a_minute_then_delivered(carousel: Carousel, client: Client) -> None:
    """The broker is down for a full minute while a file becomes available: the publish is retried
    with backoff all along it, nothing is announced, and once the broker is back the message is
    delivered, once."""
    c = carousel
    dataset, _ = tape_dataset(c, 2)
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse)
    handle = await api.stage(client, c.settings, c.queues, req, c.policy("down"))
    s = await wait_state(client, c, dataset, lambda s: s.in_total_files == 2, "the first lock check")
    order = carousel_copy.waiting(c.rucio, s.rule_ids[0])
    down_at = time.monotonic()
    c.stop_broker()
    try:
        carousel_copy.stage_file(c.rucio, c.scope, order[0], c.tape_rse, c.disk_rse)
        samples = []
        while (left := BROKER_DOWN_S - (time.monotonic() - down_at)) > 0:
            await asyncio.sleep(min(5.0, left))
            samples.append(await publish_attempts(handle))
        # Still down at the end of the minute: a connection is refused, as the worker's were.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", c.port), timeout=5).close()
        assert (await api.state(client, c.scope, dataset)).output_processed_files == 0
    finally:
        c.start_broker()
    attempts = [a for a, _ in samples]
    # Retried all along the minute (1, 2, 4, 8, 16, 32 s apart), each refused.
    assert attempts == sorted(attempts) and attempts[0] >= 1 and attempts[-1] >= 5, samples
    assert {why for a, why in samples if a > 1} == {"BrokerUnavailable"}, samples
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-down")
        got = messages(sub, 1, 60)
        carousel_copy.stage_file(c.rucio, c.scope, order[1], c.tape_rse, c.disk_rse)
        got += messages(sub, 2, 30)
        assert sub.receive(1.0) is None
    final: CarouselState = await handle.result()
    names = [json.loads(f.body)["name"] for f in got if f.headers["type"] == FILE_MESSAGE]
    assert names == order == final.announced


async def test_worker_killed_after_a_send(carousel: Carousel, client: Client) -> None:
    """A worker SIGKILLed after the broker's receipt, before the activity reported it: the next
    worker sends the message again under the same id (STOMP's at-least-once), so a consumer that
    deduplicates by ``msg_id`` sees each file once; the workflow announced each once."""
    c = carousel
    c.stop_worker()
    c.start_worker(UNEMBARGO_CRASH_AT="publish:acted", UNEMBARGO_CRASH_MARKERS=str(c.markers))
    dataset, _ = tape_dataset(c, 2)
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse)
    handle = await api.stage(client, c.settings, c.queues, req, c.policy("kill", heartbeat_s=2.0))
    s = await wait_state(client, c, dataset, lambda s: s.in_total_files == 2, "the first lock check")
    order = carousel_copy.waiting(c.rucio, s.rule_ids[0])
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-kill")
        carousel_copy.stage_file(c.rucio, c.scope, order[0], c.tape_rse, c.disk_rse)
        assert c.worker is not None
        await poll_until(lambda: not c.worker.alive(), 60, "the worker killed after its first send")
        c.start_worker()
        carousel_copy.stage_file(c.rucio, c.scope, order[1], c.tape_rse, c.disk_rse)
        got = messages(sub, 4, 40)
        assert sub.receive(1.0) is None
    final: CarouselState = await handle.result()
    ids = [f.headers["msg_id"] for f in got]
    rid = request_workflow_id(c.scope, dataset)
    first = message_id(rid, c.scope, order[0])
    assert ids.count(first) == 2 and len(set(ids)) == 3
    assert list(dict.fromkeys(json.loads(f.body)["name"] for f in got))[:2] == order == final.announced
    assert effects(c.settings, {first})[(first, "publish", "send")] == 2
