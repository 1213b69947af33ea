"""The local stack is real: each service answers, `dev up` is idempotent, `dev down` cleans up."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import boto3
import psycopg
import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from support import STACK_DIR
from unembargo.devstack import postgres, procs, stack
from unembargo.models.settings import Settings, host_port


@dataclass
class Ping:
    text: str


@activity.defn
async def echo(p: Ping) -> str:
    return p.text.upper()


@workflow.defn(sandboxed=False)
class EchoWorkflow:
    @workflow.run
    async def run(self, p: Ping) -> str:
        return await workflow.execute_activity(echo, p, start_to_close_timeout=timedelta(seconds=10))


async def test_a_workflow_runs_on_temporal(stack_up: Settings) -> None:
    """The test stack's Temporal server runs a workflow and its activity."""
    client = await Client.connect(stack_up.temporal_address)
    queue = f"echo-{uuid.uuid4().hex}"
    async with Worker(client, task_queue=queue, workflows=[EchoWorkflow], activities=[echo]):
        result = await client.execute_workflow(
            EchoWorkflow.run, Ping("hello"), id=f"echo-{uuid.uuid4().hex}", task_queue=queue
        )
    assert result == "HELLO"


def test_an_object_round_trips_through_s3(stack_up: Settings) -> None:
    """The test stack's S3 endpoint stores and returns an object under an odd key."""
    s3 = boto3.client("s3", endpoint_url=stack_up.s3_endpoint_url)
    bucket = f"roundtrip-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(70_000)
    s3.put_object(Bucket=bucket, Key="LSSTCam/20251231/x y é.fits", Body=body)
    assert s3.get_object(Bucket=bucket, Key="LSSTCam/20251231/x y é.fits")["Body"].read() == body


def test_postgresql_answers(stack_up: Settings) -> None:
    """The test stack's PostgreSQL answers."""
    with psycopg.connect(postgres.url(stack_up), connect_timeout=5) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    assert version is not None and version[0]


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", "dev", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_up_is_idempotent_and_down_leaves_nothing(
    stack_up: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A whole second stack on free ports: up, up again (no change), status, down."""
    rucio_venv = STACK_DIR / "rucio" / "venv"
    (tmp_path / "state" / "rucio").mkdir(parents=True)
    # Share the session stack's Rucio venv: the pip install is not what this test is about.
    (tmp_path / "state" / "rucio" / "venv").symlink_to(rucio_venv)
    names = ("temporal", "ui", "s3", "rucio", "listen", "broker", "web")
    ports = dict(zip(names, procs.free_ports(len(names)), strict=True))
    own = Settings(
        state_dir=tmp_path / "state",
        temporal_address=f"127.0.0.1:{ports['temporal']}",
        temporal_ui_url=f"http://127.0.0.1:{ports['ui']}",
        s3_endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        rucio_host=f"http://127.0.0.1:{ports['rucio']}",
        rucio_password_file=tmp_path / "state" / "rucio" / "password",
        dest_root=tmp_path / "dest" / "raw",
        database_url=f"sqlite:///{tmp_path / 'state' / 'db.sqlite'}",
        workflow_task_queue=f"wf-{uuid.uuid4().hex[:8]}",
    )
    env = {
        **own.environment(),
        "UNEMBARGO_LISTEN_PORT": str(ports["listen"]),
        "UNEMBARGO_CAROUSEL_BROKER_PORT": str(ports["broker"]),
        "UNEMBARGO_WEB_PORT": str(ports["web"]),
    }
    # Whatever fails below, this stack must not outlive the test (a no-op after `dev down`).
    request.addfinalizer(partial(stack.down, own))
    first = _cli(env, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    services = [service.name for service in stack.SERVICES if service.name != "postgres"]  # reused
    assert first.stdout.count("started") == len(services), first.stdout

    second = _cli(env, "up")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "everything already up" in second.stdout
    assert "started" not in second.stdout.replace("not started", "")

    status = _cli(env, "status")
    assert status.returncode == 0, status.stdout

    pids = [procs.recorded(own.state_dir, n) for n in services]
    assert all(pids), pids
    down = _cli(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    for rec in pids:
        assert rec is not None
        # `down` did not start them, so it cannot reap them: each stays a zombie until init
        # does (about a second here). Gone within seconds, or it was not stopped.
        assert procs.poll(partial(_gone, rec.pid), 10, raise_on_timeout=False), rec
    urls = [own.temporal_address, own.temporal_ui_url, own.s3_endpoint_url, own.rucio_host]
    urls += [f"http://127.0.0.1:{ports['listen']}", f"stomp://127.0.0.1:{ports['broker']}"]
    urls.append(f"http://127.0.0.1:{ports['web']}")
    for url in urls:
        assert url is not None
        assert not procs.port_open(*host_port(url)), f"{url} still listening"
    # PostgreSQL was reused, not started by this stack: down must leave it running.
    assert postgres.health(stack_up)[0]
