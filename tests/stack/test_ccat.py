"""The CCAT flow end to end on the real stack: Temporal, moto S3 archives, rsync between
buffer folders, one real worker process per site (``unembargo worker --location ...``).

Four observations are filed at the telescope SOURCE and packaged into bundles, sent
round-robin to the two archive sites. On the way a worker is SIGKILLed once in each of tar,
transfer, unpack and delete, a byte of a transfer is flipped on arrival, and the second
archive's S3 refuses connections for a minute (LTA_DOWN_S) from the first attempt to put
there. It must end with every package in both archive buckets, its bytes' sha256 the
package's, a metadata sidecar beside it, the PhysicalCopy rows saying exactly what is on each
disk and bucket, and the SOURCE and BUFFER copies deleted only after both archives had theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client

from support import WorkerProcess, poll_until
from tcp_proxy import TcpProxy
from unembargo.client.ccat import file_observation, package_view, start_package
from unembargo.devstack import temporal
from unembargo.devstack.ccat_sites import CcatSites, add_sites, make_buckets
from unembargo.models import ccat as c
from unembargo.models.ccat_tables import CopyState, PhysicalCopy, RawDataPackage
from unembargo.models.locations import StorageType, get_location
from unembargo.models.settings import Settings, host_port
from unembargo.models.tables import Effect, connect

OBSERVATIONS = 4
FILE_SIZE = 64 * 1024
# Two packages (three files each, plus tar headers) fit in a bundle, a third would not.
BUNDLE_LIMIT = 2 * 3 * FILE_SIZE + FILE_SIZE
POLICY = c.CcatPolicy(heartbeat_s=3, bundle_wait_s=10)
RESULT_TIMEOUT = 180


@pytest.fixture(scope="module")
async def ccat(
    stack_up: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Settings, Client]]:
    """The stack's Temporal and S3 with a database, namespace and workflow queue of this module's."""
    root = tmp_path_factory.mktemp("ccat")
    tag = uuid.uuid4().hex[:8]
    own = stack_up.model_copy(
        update={
            "state_dir": root / "state",
            "database_url": SecretStr(f"sqlite:///{root / 'ccat.db'}"),
            "workflow_task_queue": f"ccat-workflows-{tag}",
            "temporal_namespace": f"test-ccat-{tag}",
        }
    )
    await temporal.ensure_namespace(await Client.connect(own.temporal_address), own.temporal_namespace)
    yield own, await Client.connect(own.temporal_address, namespace=own.temporal_namespace)


def observe(sites: CcatSites, session: Session, obs: str) -> None:
    folder = sites.root / sites.source / obs
    folder.mkdir(parents=True)
    paths = [folder / f"{obs}_{module}.fits" for module in ("m1", "m2", "m3")]
    for path in paths:
        path.write_bytes(hashlib.sha256(path.name.encode()).digest() * (FILE_SIZE // 32))
    file_observation(session, sites.source, obs, paths, instrument_module="m1-m3")


# A worker is SIGKILLed once at each: a tar installed but not recorded, a transfer starting,
# an unpack starting, a deletion marked in progress with its bytes still there.
POINTS = ["ccat_package:acted", "ccat_transfer:acting", "ccat_unpack:acting", "ccat_delete:acting"]
# The second archive site's endpoint refuses connections until this long after the first
# attempt to put a package there: "an LTA down for a minute". The step's retry policy
# (CCAT_RETRY: backoff doubling to at most a minute, never giving up) rides it out.
LTA_DOWN_S = 60


class Workers:
    """One worker process per site, each replaced by a new one when it is killed."""

    def __init__(self, settings: Settings, specs: list[tuple[list[str], dict[str, str]]]) -> None:
        self.settings, self.specs = settings, specs
        self.procs = [WorkerProcess(settings, locs, env) for locs, env in specs]
        self.kills = 0

    def replace_dead(self) -> None:
        for i, proc in enumerate(self.procs):
            if not proc.alive():
                assert proc.proc.returncode == -signal.SIGKILL, proc.output()[-3000:]
                self.kills += 1
                self.procs[i] = WorkerProcess(self.settings, *self.specs[i])

    async def until(self, done: asyncio.Future[object]) -> None:
        while not done.done():
            self.replace_dead()
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


async def test_every_package_reaches_both_archives_verified_through_kills_a_corrupt_byte_and_an_outage(
    ccat, tmp_path
):
    """End to end, with the faults of the issue: a worker SIGKILLed in tar, transfer, unpack and
    delete; a byte flipped in transit (ChecksumMismatch, sent again); an archive site's S3
    refusing connections for a while. Nothing is lost, nothing is archived unverified."""
    settings, client = ccat
    engine = connect(settings.database_url.get_secret_value())
    tag = uuid.uuid4().hex[:6]
    assert settings.s3_endpoint_url is not None
    proxy = TcpProxy(host_port(settings.s3_endpoint_url))
    with Session(engine) as s:
        sites = add_sites(s, tmp_path / "sites", tag=tag, s3_endpoint=settings.s3_endpoint_url)
        down = get_location(s, sites.archives[1].archive)
        down.endpoint = proxy.url
        s.add(down)
        s.commit()
    make_buckets(sites, settings.s3_endpoint_url)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {
        "UNEMBARGO_CCAT_BUNDLE_LIMIT_BYTES": str(BUNDLE_LIMIT),
        "UNEMBARGO_CRASH_MARKERS": str(markers),
        "UNEMBARGO_CRASH_AT": ",".join(POINTS),
        "UNEMBARGO_CORRUPT_AT": "transfer",
    }
    first, second = sites.archives
    workers = Workers(
        settings,
        [
            ([sites.source, *sites.buffers], env),
            ([first.buffer, first.archive, sites.processing], env),
            ([second.buffer, second.archive], env),
        ],
    )
    packages = [f"obs-{tag}-{i}" for i in range(OBSERVATIONS)]
    loop = asyncio.get_running_loop()
    done: asyncio.Future[object] = loop.create_future()
    keeper = asyncio.create_task(workers.until(done))
    outage = asyncio.create_task(_outage(engine, proxy, f"put {sites.archives[1].archive}"))
    try:
        ids = []
        with Session(engine) as s:
            for obs in packages:
                observe(sites, s, obs)
                wid, _ = await start_package(
                    client, s, settings.workflow_task_queue, obs, sites.source, POLICY
                )
                ids.append(wid)
        for wid in ids:
            await asyncio.wait_for(client.get_workflow_handle(wid).result(), RESULT_TIMEOUT)
        down_from, down_until = await asyncio.wait_for(outage, RESULT_TIMEOUT)
        with Session(engine) as s:
            bundles = sorted({r.transfer for r in s.exec(select(RawDataPackage)).all() if r.transfer})
        results = []
        for b in bundles:
            handle = client.get_workflow_handle(c.transfer_workflow_id(b), result_type=c.TransferResult)
            results.append(await asyncio.wait_for(handle.result(), RESULT_TIMEOUT))
    finally:
        done.set_result(None)
        await keeper
        outage.cancel()
        workers.stop()
        proxy.refuse()

    assert sorted(p.name for p in markers.iterdir()) == sorted(
        [p.replace(":", "-") for p in POINTS] + ["corrupt-transfer"]
    )
    assert workers.kills == len(POINTS)
    with Session(engine) as s:
        tries = [e.at for e in s.exec(select(Effect)).all() if e.action == f"put {second.archive}"]
    assert down_until - down_from >= timedelta(seconds=LTA_DOWN_S)
    during = [t for t in tries if down_from <= t < down_until]
    # Refused, then tried again with backoff for the whole minute (1+2+4+8+16 s apart), then
    # put once the archive was back: the transfer workflows did not fail, the puts came later.
    assert len(during) >= 5, f"only {len(during)} tries while the archive was down"
    assert max(tries) >= down_until, "nothing was put after the outage"
    assert {r.destination for r in results} == {a.site for a in sites.archives}, "not round-robin"
    assert sum(r.packages for r in results) == OBSERVATIONS and not any(r.refused for r in results)
    assert await _mismatch_seen(client, bundles), "the corrupt arrival was not named ChecksumMismatch"
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    with Session(engine) as s:
        for obs in packages:
            view = package_view(s, obs)
            assert view is not None and view.state == "archived"
            assert view.verified_archives == sorted(a.site for a in sites.archives)
            for a in sites.archives:
                key = f"ccat/{c.package_relpath(obs)}"
                body = s3.get_object(Bucket=a.where, Key=key)["Body"].read()
                assert hashlib.sha256(body).hexdigest() == view.checksum
                sidecar = s3.get_object(Bucket=a.where, Key=key + c.SIDECAR_SUFFIX)["Body"].read()
                assert view.checksum in sidecar.decode()
        _rows_match_reality(s, sites, s3)
        _deleted_only_after_both_archives(s, packages, sites)


async def _outage(engine: Engine, proxy: TcpProxy, put: str) -> tuple[datetime, datetime]:
    """Keep the archive down (the proxy not listening) until LTA_DOWN_S after the first put
    there; when it was down, from the first try to the moment it listened again."""

    def first_try() -> datetime | None:
        with Session(engine) as s:
            row = s.exec(select(Effect).where(Effect.action == put).order_by(col(Effect.at))).first()
            return row.at if row is not None else None

    await poll_until(lambda: first_try() is not None, timeout=RESULT_TIMEOUT, what=f"a {put}")
    started = first_try()
    assert started is not None
    await asyncio.sleep(LTA_DOWN_S)
    # Still down at the end of the minute: a connection is refused, as the workers' were.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(host_port(proxy.url), timeout=5).close()
    ended = datetime.now(UTC).replace(tzinfo=started.tzinfo)
    proxy.start()
    return started, ended


async def _mismatch_seen(client: Client, bundles: list[str]) -> bool:
    for name in bundles:
        async for event in client.get_workflow_handle(c.transfer_workflow_id(name)).fetch_history_events():
            # Retries are not events: the attempt that ran last records why the one before failed.
            if event.HasField("activity_task_started_event_attributes"):
                failure = event.activity_task_started_event_attributes.last_failure
                if failure.application_failure_info.type == c.CHECKSUM_MISMATCH:
                    return True
    return False


def _rows_match_reality(s: Session, sites: CcatSites, s3: object) -> None:
    """Every copy row that is not DELETED has its bytes there, of its size; a DELETED one has none;
    and every package tar on a buffer disk has a row."""
    for row in s.exec(select(PhysicalCopy)).all():
        loc = get_location(s, row.location)
        if loc.storage == StorageType.S3:
            listed = s3.list_objects_v2(Bucket=loc.bucket, Prefix=f"{loc.prefix}{row.relpath}")  # type: ignore[attr-defined]
            sizes = [
                o["Size"] for o in listed.get("Contents", []) if o["Key"] == f"{loc.prefix}{row.relpath}"
            ]
        else:
            path = Path(loc.path or "") / row.relpath
            sizes = [path.stat().st_size] if path.is_file() else []
        if row.state == CopyState.DELETED:
            assert sizes == [], f"{row.kind} {row.unit} at {row.location} is DELETED but still there"
        else:
            assert sizes == [row.size] and row.verified, f"{row.kind} {row.unit} at {row.location}: {sizes}"
            assert loc.type == "long_term_archive", f"{row.kind} {row.unit} left at {row.location}"
    for buffer in [*sites.buffers, *(a.buffer for a in sites.archives)]:
        leftovers = [p for p in (sites.root / buffer).rglob("*") if p.is_file()]
        assert leftovers == [], f"{buffer} still holds {leftovers}"
    assert not [p for p in (sites.root / sites.source).rglob("*") if p.is_file()]


def _deleted_only_after_both_archives(s: Session, packages: list[str], sites: CcatSites) -> None:
    """From the side-effect ledger: each package's source files and buffer copies were deleted
    after its last archive copy was put, each deletion once (the kill came before it acted)."""
    rows = s.exec(select(Effect)).all()
    for obs in packages:
        puts = [e.at for e in rows if e.obs_id == obs and e.action.startswith("put ")]
        deletes = [e.at for e in rows if e.obs_id == obs and e.action.startswith("delete ")]
        # Puts to the archive that was down were tried again: count where, not how often.
        targets = {e.action for e in rows if e.obs_id == obs and e.action.startswith("put ")}
        assert len(targets) == len(sites.archives), (obs, targets)
        assert len(deletes) == 3 + 2, (obs, deletes)  # three files, two buffer copies
        assert min(deletes) > max(puts), f"{obs} deleted before both archives had it"
