"""The carousel flow end to end on the real stack: a dataset of small files with replicas at a tape
RSE of the real Rucio, staged by a rule to a disk RSE. The stack's stand-in for FTS3
(devstack/carousel_copy.py) copies each file in turn, checks its adler32 and marks the replica
available; a real worker reads the rule's locks and publishes one message per file to the real
embedded STOMP broker, where a real subscription receives them.

What only the unit layer proves (tests/unit/test_carousel_workflow.py, time-skipping server):
files attached while the dataset is open, a STUCK lock re-ruled from another source, max-wait,
an operator's give_up, a cancelled rule recreated, the broker refusing for a while.
"""

from __future__ import annotations

import json
import random
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session
from temporalio.client import Client

from support import WorkerProcess, effects, poll_until
from unembargo.adapters.stomp import Frame, StompConnection
from unembargo.client import carousel as api
from unembargo.devstack import broker, carousel_copy, procs, rucio_server
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
from unembargo.models.locations import DataLocation, LocationType, StorageType, upsert_location
from unembargo.models.settings import Settings
from unembargo.models.tables import connect

FILES = 10
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
    with Session(connect(settings.database_url.get_secret_value())) as session:
        upsert_location(
            session,
            DataLocation(name=name, site=f"csite-{tag}", type=LocationType.PROCESSING,
                         storage=StorageType.DISK, path=str(root / disk_rse / scope)),
            short_name=f"c{tag}",
        )  # fmt: skip
        queues = api.route(session, CarouselSettings(location=name))
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


def tape_dataset(c: Carousel, files: int) -> tuple[str, dict[str, str]]:
    """A closed dataset of small files written at both tape RSEs and registered there; name -> adler32."""
    rnd = random.Random()
    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    sums = {}
    replicas = []
    for i in range(files):
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
    c.rucio.add_dataset(c.scope, dataset)
    c.rucio.attach_dids(c.scope, dataset, [{"scope": c.scope, "name": r["name"]} for r in replicas])
    c.rucio.set_status(c.scope, dataset, open=False)
    return dataset, sums


def messages(sub: StompConnection, until: int, timeout: float = 60.0) -> list[Frame]:
    got: list[Frame] = []
    while len(got) < until and (frame := sub.receive(timeout)) is not None:
        got.append(frame)
    return got


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
        # A second request for the same dataset joins the first: one workflow, one rule.
        again = await api.stage(client, c.settings, c.queues, req, policy)
        assert again.id == handle.id == request_workflow_id(c.scope, dataset)

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
        for name in order:
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


async def test_adopts_an_existing_rule(carousel: Carousel, client: Client) -> None:
    """A rule made before the request (DuplicateRule for a new one) is adopted, not doubled."""
    c = carousel
    dataset, _ = tape_dataset(c, 2)
    [existing] = c.rucio.add_replication_rule(
        [{"scope": c.scope, "name": dataset}], 1, c.disk_rse, source_replica_expression=c.tape_rse
    )
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse)
    policy = c.policy("adopt")
    handle = await api.stage(client, c.settings, c.queues, req, policy)

    async def adopted() -> bool:
        s = await api.state(client, c.scope, dataset)
        return s.rule_ids == [existing] and s.in_total_files == 2

    await poll_until(adopted, 60, "the existing rule adopted")
    for name in carousel_copy.waiting(c.rucio, existing):
        carousel_copy.stage_file(c.rucio, c.scope, name, c.tape_rse, c.disk_rse)
    final: CarouselState = await handle.result()
    assert final.adopted and final.output_processed_files == 2
    rules = list(c.rucio.list_replication_rules(filters={"scope": c.scope, "name": dataset}))
    assert [r["id"] for r in rules] == [existing]


async def wait_state(client: Client, c: Carousel, dataset: str, check: Any, what: str) -> CarouselState:
    found: list[CarouselState] = []

    async def ok() -> bool:
        found[:] = [await api.state(client, c.scope, dataset)]
        return bool(check(found[0]))

    await poll_until(ok, 60, what)
    return found[0]


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


async def test_broker_down_then_delivered(carousel: Carousel, client: Client) -> None:
    """The broker is down while a file becomes available: the publish is retried with backoff and
    the message is delivered once the broker is back, once."""
    c = carousel
    dataset, _ = tape_dataset(c, 2)
    req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse)
    handle = await api.stage(client, c.settings, c.queues, req, c.policy("down"))
    s = await wait_state(client, c, dataset, lambda s: s.in_total_files == 2, "the first lock check")
    order = carousel_copy.waiting(c.rucio, s.rule_ids[0])
    c.stop_broker()
    try:
        carousel_copy.stage_file(c.rucio, c.scope, order[0], c.tape_rse, c.disk_rse)

        async def refused() -> bool:
            pending = (await handle.describe()).raw_description.pending_activities
            return any(p.activity_type.name == "carousel_publish" and p.attempt >= 3 for p in pending)

        await poll_until(refused, 60, "the publish retried while the broker is down")
        assert (await api.state(client, c.scope, dataset)).output_processed_files == 0
    finally:
        c.start_broker()
    with StompConnection("127.0.0.1", c.port) as sub:
        sub.subscribe(c.destination + "-down")
        got = messages(sub, 1, 40)
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
