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

from support import WorkerProcess, poll_until
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
    tape_rse: str
    disk_rse: str
    queues: dict[str, str]
    destination: str
    port: int


@pytest.fixture(scope="module")
def carousel(
    module_settings: Settings, rucio: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Carousel]:
    """A tape RSE and a disk RSE (file protocols under this module's folders), a processing
    location serving staging and monitoring, the embedded broker, and a worker."""
    settings = module_settings
    tag = uuid.uuid4().hex[:6]
    root = tmp_path_factory.mktemp("carousel")
    scope = settings.rucio_scope
    tape_rse, disk_rse = f"CTAPE_{tag.upper()}", f"CDISK_{tag.upper()}"
    rucio.add_rse(tape_rse, deterministic=True, rse_type="TAPE")
    for rse, folder in ((tape_rse, root / "tape" / scope), (disk_rse, root / "disk" / scope)):
        folder.mkdir(parents=True)
        rucio_server.ensure_rse(rucio, rse, folder)
        rucio.set_local_account_limit(settings.rucio_account, rse, 10**12)
    name = f"carousel-{tag}"
    with Session(connect(settings.database_url.get_secret_value())) as session:
        upsert_location(
            session,
            DataLocation(name=name, site=f"csite-{tag}", type=LocationType.PROCESSING,
                         storage=StorageType.DISK, path=str(root / "disk" / scope)),
            short_name=f"c{tag}",
        )  # fmt: skip
        queues = api.route(session, CarouselSettings(location=name))
    [port] = procs.free_ports(1)
    srv, _ = broker.start_thread(port)
    env = {"UNEMBARGO_CAROUSEL_BROKER_PORT": str(port)}
    worker = WorkerProcess(settings, [name], env=env)
    try:
        yield Carousel(settings, rucio, scope, tape_rse, disk_rse, queues, f"/queue/carousel-{tag}", port)
    finally:
        worker.stop()
        broker.stop_thread(srv)


@pytest.fixture(scope="module")
async def client(module_settings: Settings) -> Client:
    """A Temporal client of the module's own namespace (its worker's)."""
    s = module_settings
    return await Client.connect(s.temporal_address, namespace=s.temporal_namespace)


def tape_dataset(c: Carousel, files: int) -> tuple[str, dict[str, str]]:
    """A closed dataset of small files written at the tape RSE and registered there; name -> adler32."""
    rnd = random.Random()
    dataset = f"ds-{uuid.uuid4().hex[:8]}"
    sums = {}
    replicas = []
    for i in range(files):
        name = f"{dataset}.f{i:03d}"
        data = rnd.randbytes(rnd.randrange(512, 4096))
        path = rucio_server.pfn_path(c.rucio, c.tape_rse, c.scope, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        sums[name] = f"{zlib.adler32(data):08x}"
        replicas.append({"scope": c.scope, "name": name, "bytes": len(data), "adler32": sums[name]})
    c.rucio.add_replicas(rse=c.tape_rse, files=replicas)
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
        sub.subscribe(c.destination)
        req = CarouselRequest(c.scope, dataset, c.tape_rse, c.disk_rse, max_wait_s=3600.0)
        policy = CarouselPolicy(**{**POLICY.__dict__, "destination": c.destination})
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
    policy = CarouselPolicy(**{**POLICY.__dict__, "destination": c.destination + "-adopt"})
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
