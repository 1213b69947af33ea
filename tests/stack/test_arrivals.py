"""The arrivals flow end to end on the real stack: notifications -> `unembargo listen` ->
arrival workflow -> raws in the embargo butler -> unembargo at the embargo end.

One full focal plane (205 raws, their sidecars, expectedSensors and an object whose key
has a space) goes through a real endpoint and two real workers, and meets on the way:
Ceph- and AWS-shaped notifications, out of order and replayed; a notification for an
object not uploaded yet; notifications that are never posted (found by the sweep); a
worker SIGKILLed while an ingest batch is done but not reported; a wrong secret and a
malformed key. It must end with every raw in the embargo butler exactly once and the
exposure unembargoed (verify.check_unembargoed), started at its embargo end, not before.
On the way, `status` reads the arrival as arriving with its 3 missing sensors, and the
day's listing (one visibility query) as started at the end.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from lsst.daf.butler import Butler
from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus

from support import WorkerProcess, poll_until
from unembargo.client.arrivals import arrival_state, sweep_day
from unembargo.client.status import arrival_status, day_arrivals
from unembargo.devstack import lsstcam, procs
from unembargo.devstack.notify import SECRET_HEADER, aws_record, body, ceph_record
from unembargo.devstack.seed import CADENCE, NIGHT_START, plan_exposure, seed_exposure
from unembargo.engine.starter import start_exposures
from unembargo.models import arrival
from unembargo.models.exposure import Exposure, Policy
from unembargo.models.names import workflow_id
from unembargo.models.settings import Settings
from unembargo.models.tables import connect, step_queues
from verify import check_unembargoed

SECRET = "arrivals-test-secret"
EMBARGO = timedelta(seconds=100)
SPACE_NAME = "shutter notes 1.txt"
# Fast recovery and retries: a killed ingest is retried after 5 s without a heartbeat.
ENV = {"UNEMBARGO_HEARTBEAT_TIMEOUT": "5s", "UNEMBARGO_EMBARGO_PERIOD": f"{EMBARGO.total_seconds():.0f}s"}


def _recent_exposure(now: datetime) -> tuple[int, int]:
    """(day_obs, seq_num) of a synthetic exposure that ended just before ``now``."""
    for back in range(0, 3):
        day_obs = lsstcam.day_obs_of(now - timedelta(days=back))
        first = lsstcam.day_obs_start(day_obs) + NIGHT_START
        if first < now - timedelta(seconds=60):
            seq = int((now - timedelta(seconds=60) - first) / CADENCE) + 1
            return day_obs, seq
    raise AssertionError("no night began in the last three days")


class Listener:
    """A real `unembargo listen` process on a free loopback port."""

    def __init__(self, settings: Settings) -> None:
        self.port = procs.free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="listen-", suffix=".log")[1])
        env = {
            **os.environ, **settings.environment(), **ENV,
            "UNEMBARGO_LISTEN_PORT": str(self.port),
            "UNEMBARGO_NOTIFY_SECRET": SECRET,
            "UNEMBARGO_ARRIVAL_RETRY_S": "3",
        }  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unembargo.cli.app", "listen"],
            env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return self.proc.poll() is None and False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)


def _raws(butler: Butler, exposure_id: int) -> list:
    return list(
        butler.query_datasets(
            "raw", collections="LSSTCam/raw/*", instrument="LSSTCam", exposure=exposure_id,
            find_first=False, explain=False, limit=None,
        )
    )  # fmt: skip


async def test_a_full_exposure_arrives_by_notification_and_is_unembargoed_at_its_embargo_end(
    settings: Settings, client: Client, locations: list[str], tmp_path: Path
) -> None:
    day_obs, seq = _recent_exposure(datetime.now(UTC))
    plan = plan_exposure(day_obs, seq, "science")
    lost = [lsstcam.DETECTORS[i].id for i in (7, 120, 200)]
    late = lost[0]  # notified before it is uploaded (not readable yet); the others never notified
    first = [d.id for d in lsstcam.DETECTORS if d.id not in lost]

    markers = tmp_path / "markers"
    markers.mkdir()
    crash = {**ENV, "UNEMBARGO_CRASH_AT": "ingest_raws:acted", "UNEMBARGO_CRASH_MARKERS": str(markers)}
    workers = [WorkerProcess(settings, locations, env=crash) for _ in range(2)]
    listener = Listener(settings)
    try:
        await poll_until(listener.up, 60, "`unembargo listen` to answer")
        seeded = seed_exposure(
            settings, day_obs, seq, detectors=first, extra_objects={SPACE_NAME: b"dome closed at 23:59\n"},
            file_size=16 * 1024, ingest=False,
        )  # fmt: skip
        s3 = _s3(settings)
        objects = [o for o in s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=seeded.prefix)["Contents"]]
        objects += s3.list_objects_v2(
            Bucket=settings.s3_bucket, Prefix=seeded.prefix, StartAfter=objects[-1]["Key"]
        ).get("Contents", [])
        assert len(objects) == 2 * len(first) + 2
        late_key = f"{seeded.prefix}{plan.obs_id}_{lsstcam.DETECTORS[late].full_name}.fits"
        posts = [(o["Key"], o["Size"], o["ETag"].strip('"')) for o in objects] + [
            (late_key, 16 * 1024, "0" * 32)
        ]
        random.Random(7).shuffle(posts)
        posts += posts[:40]  # replayed notifications
        started = time.monotonic()
        acks = []
        async with httpx.AsyncClient(timeout=30) as http:
            for i, (key, size, etag) in enumerate(posts):
                if i % 2:
                    r = await http.post(
                        f"{listener.url}/notify",
                        content=body(aws_record(settings.s3_bucket, key, size, etag)),
                        headers={SECRET_HEADER: SECRET},
                    )
                else:
                    r = await http.post(
                        f"{listener.url}/notify",
                        content=body(ceph_record(settings.s3_bucket, key, size, etag, SECRET)),
                    )
                assert r.status_code == 200, r.text
                acks.append(r.elapsed.total_seconds())

            # Bad events: refused by name, nothing signalled.
            good_key = posts[0][0]
            wrong = await http.post(
                f"{listener.url}/notify",
                content=body(ceph_record(settings.s3_bucket, good_key, 1, "x", "guess")),
            )
            assert wrong.status_code == 401 and wrong.json()["error"] == "bad_secret"
            bad = await http.post(
                f"{listener.url}/notify",
                content=body(ceph_record(settings.s3_bucket, f"LSSTCam/{day_obs}/../x.fits", 1, "x", SECRET)),
            )
            assert bad.status_code == 400 and bad.json()["error"] == "malformed_key"
            metrics = (await http.get(f"{listener.url}/metrics")).text
        assert 'outcome="bad_secret"} 1' in metrics and 'outcome="malformed_key"} 1' in metrics

        async def state() -> arrival.ArrivalState:
            return await arrival_state(client, "LSSTCam", plan.obs_id)

        async def got_first() -> bool:
            s = await state()
            return s.raws_ingested == len(first) and lsstcam.DETECTORS[late].full_name in " ".join(
                s.unreadable
            )

        await poll_until(got_first, 120, f"{len(first)} raws ingested and the late one unreadable")
        assert list(markers.iterdir()), "no worker was killed during an ingest batch"
        s = await state()
        assert s.seen == len(objects) + 1 and s.duplicates >= 40 and s.sidecars == len(first)
        assert s.others == 1 and not s.complete and len(s.missing) == 3
        shown = await arrival_status(client, "LSSTCam", plan.obs_id)
        assert (shown.state, shown.missing, shown.expected) == ("arriving", 3, 205), shown

        # The late raw arrives (read again on its own); the other two are never announced.
        seed_exposure(settings, day_obs, seq, detectors=lost, file_size=16 * 1024, ingest=False)
        swept = await sweep_day(client, settings, "LSSTCam", day_obs)
        # Two raws and their sidecars, and the late raw's sidecar: no notification announced them.
        assert swept.signalled == 5, swept
        await poll_until(lambda: _complete(client, plan.obs_id), 60, "the exposure to complete")
        ingest_s = time.monotonic() - started

        async def embargo_known() -> bool:
            return (await state()).embargo_end is not None

        await poll_until(embargo_known, 30, "the embargo end to be known")
        embargo_end = datetime.fromisoformat((await state()).embargo_end or "")
        waiting = (await state()).step
        assert abs(embargo_end - (plan.end + EMBARGO)) < timedelta(seconds=1)
        handle = client.get_workflow_handle(workflow_id("LSSTCam", plan.obs_id))

        async def unembargoed() -> bool:
            try:
                return (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
            except Exception:  # noqa: BLE001 - not started yet
                return False

        await poll_until(unembargoed, 150, "the exposure to be unembargoed")
        desc = await handle.describe()
        assert desc.start_time >= embargo_end, "the unembargo workflow started before the embargo ended"

        async def listed_started() -> bool:
            day = await day_arrivals(client, "LSSTCam", day_obs)
            return plan.obs_id in day and day[plan.obs_id].state == "started"

        # The day's listing (status --day, reconcile) from one visibility query.
        await poll_until(listed_started, 30, "the day's arrivals to list it as started")
        done = desc.close_time
        assert done is not None
        assert waiting in (arrival.VISITS, arrival.EMBARGOED) or embargo_end < datetime.now(UTC), waiting
        print(f"\nacks p50 {sorted(acks)[len(acks) // 2] * 1000:.0f} ms, ingest {ingest_s:.1f} s, "
              f"embargo end -> started {(desc.start_time - embargo_end).total_seconds():.1f} s, "
              f"-> unembargoed {(done - embargo_end).total_seconds():.1f} s")  # fmt: skip

        embargo = Butler.from_config(settings.embargo_butler)
        raws = _raws(embargo, plan.exposure_id)
        detectors = [ref.dataId["detector"] for ref in raws]
        assert sorted(detectors) == list(range(205)), "a raw is missing or was ingested twice"
        assert embargo.query_dimension_records("visit", instrument="LSSTCam", visit=plan.exposure_id)
        check_unembargoed(settings, day_obs, plan.obs_id, plan.exposure_id, list(seeded.tracts))

        # `unembargo start`'s path finds the same workflow: never started twice.
        with Session(connect(settings.database_url.get_secret_value())) as session:
            queues = step_queues(session)
        exposure = Exposure("LSSTCam", day_obs, plan.obs_id, plan.exposure_id)
        (again,) = await start_exposures(client, settings.workflow_task_queue, [exposure], queues, Policy())
        assert again.outcome == "completed"
    finally:
        listener.stop()
        for w in workers:
            w.stop()


async def _complete(client: Client, obs_id: str) -> bool:
    s = await arrival_state(client, "LSSTCam", obs_id)
    return s.complete


def _s3(settings: Settings):
    import boto3

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url)


pytestmark = pytest.mark.timeout(400)
