"""Secrets, file contents and paths: what real runs leave in history, logs and on disk.

Real workers on the real stack run exposures with every secret configured (the
Rucio password, an S3 secret key, a database URL password, the payload key), some
to completion and some into a named failure (a destination conflict, a Rucio login
with a wrong password). Then the histories fetched from the server (every payload
decoded), the workers' logs and the CLI's output are searched for each secret and
for a byte string that only a seeded object holds. Also: object keys and names
cannot place a file outside the destination root, a workflow input with an unsafe
name fails at once and does nothing, and the payload codec leaves only ciphertext
on the server.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from google.protobuf.json_format import MessageToJson
from pydantic import SecretStr
from sqlmodel import Session
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from support import (
    WorkerProcess,
    fresh_day,
    location_row,
    plant_foreign_zip,
    poll_until,
    seed_small,
    start_one,
)
from unembargo.client.status import exposure_status
from unembargo.devstack import postgres
from unembargo.devstack.seed import SeededExposure
from unembargo.engine.codec import ENCODING, PayloadCodecAES, PayloadKeyError, new_key, read_key
from unembargo.engine.connection import connect
from unembargo.engine.starter import start_exposures
from unembargo.models import names
from unembargo.models.exposure import DESTINATION, RUCIO, STEPS, Exposure, ExposureInput, Policy, StepQueues
from unembargo.models.flow import location_kinds
from unembargo.models.locations import location_queues
from unembargo.models.settings import Settings
from unembargo.models.tables import connect as db_connect
from unembargo.models.tables import step_queues, upsert_location
from verify import check_unembargoed

# Heartbeats at the production default: the export step beats every 5 s, and this module is
# not about crash recovery (a tighter timeout cancels attempts on a loaded 2-core machine).
FAST = Policy(heartbeat_s=30, incomplete_wait_s=8, incomplete_poll_s=2)
TAG = uuid.uuid4().hex[:8]
# Only one seeded object holds these bytes; no history, log or message may.
CONTENT = f"content-only-in-a-file-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Secrets:
    """Every secret the runs are configured with, each distinctive enough to search for."""

    rucio_password: str
    wrong_rucio_password: str
    s3_secret_key: str
    database_password: str
    payload_key: bytes
    # Rucio tokens the workers were issued (read from their token cache after the runs).
    rucio_tokens: tuple[str, ...] = ()

    def searched(self) -> dict[str, str]:
        key = self.payload_key
        return {
            **{f"a Rucio auth token ({i})": token for i, token in enumerate(self.rucio_tokens)},
            "the Rucio password": self.rucio_password,
            "the wrong Rucio password": self.wrong_rucio_password,
            "the S3 secret key": self.s3_secret_key,
            "the database password": self.database_password,
            "the payload key (base64)": base64.b64encode(key).decode(),
            "the payload key (hex)": key.hex(),
            "the payload key (bytes)": key.decode("latin-1"),
            "a file's content": CONTENT,
        }


@dataclass(frozen=True)
class Site:
    """Settings, queues and worker of one kind of run (plain or encrypted payloads)."""

    settings: Settings
    queues: StepQueues
    worker: WorkerProcess


@pytest.fixture(scope="module")
def secrets(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    return Secrets(
        rucio_password=module_settings.rucio_secret(),
        wrong_rucio_password=f"wrong-rucio-{uuid.uuid4().hex}",
        s3_secret_key=f"s3-secret-{uuid.uuid4().hex}",
        database_password=f"db-pw-{uuid.uuid4().hex}",
        payload_key=new_key(),
    )


@pytest.fixture(scope="module")
def database(stack_up: Settings, secrets: Secrets) -> Iterator[str]:
    """A PostgreSQL database of this module; its URL carries a password (the server trusts loopback)."""
    admin = postgres.url(stack_up)
    name = f"unembargo_security_{TAG}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin)
    netloc = f"{parts.username or 'postgres'}:{secrets.database_password}@{parts.hostname}:{parts.port}"
    yield urlunsplit((parts.scheme, netloc, f"/{name}", "", ""))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, secrets: Secrets) -> Path:
    path = tmp_path_factory.mktemp("key") / "payload-key"
    path.write_text(base64.b64encode(secrets.payload_key).decode() + "\n")
    path.chmod(0o600)
    return path


def _locations(settings: Settings, kind_names: dict[str, str]) -> StepQueues:
    """Locations of their own (name -> operation); each step's queue at them."""
    with Session(db_connect(settings.database_url.get_secret_value())) as session:
        for name, kind in kind_names.items():
            upsert_location(session, location_row(settings, kind, name, "security"))
        if set(kind_names.values()) != set(location_kinds(STEPS)):
            return {}
        return step_queues(session, at=list(kind_names))


def _site(base: Settings, secrets: Secrets, label: str, **update: Any) -> Site:
    own = base.model_copy(update={"workflow_task_queue": f"unembargo-workflows-{label}-{TAG}", **update})
    dest, rucio = f"dest-{label}-{TAG}", f"rucio-{label}-{TAG}"
    queues = _locations(own, {dest: DESTINATION, rucio: RUCIO})
    worker = WorkerProcess(own, [dest, rucio], env={"AWS_SECRET_ACCESS_KEY": secrets.s3_secret_key})
    return Site(own, queues, worker)


@pytest.fixture(scope="module")
def base(module_settings: Settings, database: str) -> Settings:
    return module_settings.model_copy(update={"database_url": SecretStr(database)})


@pytest.fixture(scope="module")
def plain(base: Settings, secrets: Secrets) -> Iterator[Site]:
    site = _site(base, secrets, "plain")
    yield site
    site.worker.stop()


@pytest.fixture(scope="module")
def sealed(base: Settings, secrets: Secrets, key_file: Path) -> Iterator[Site]:
    site = _site(base, secrets, "sealed", payload_key_file=key_file)
    yield site
    site.worker.stop()


def verbose_worker(settings: Settings, location: str, env: dict[str, str]) -> WorkerProcess:
    """A worker at DEBUG level (``unembargo -v worker``) serving one location's queue only."""
    argv = [sys.executable, "-m", "unembargo.cli.app", "-v", "worker", "--location", location]
    return WorkerProcess(settings, [location], env, argv=[*argv, "--no-workflows"])


@pytest.fixture(scope="module")
def wrong_rucio(
    plain: Site, secrets: Secrets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[StepQueues, WorkerProcess]]:
    """Queues whose Rucio steps go to a worker logging in with a wrong password."""
    name = f"rucio-wrong-{TAG}"
    _locations(plain.settings, {name: RUCIO})
    # A state dir of its own: no token cached by a worker that logged in with the right password.
    own = plain.settings.model_copy(update={"state_dir": tmp_path_factory.mktemp("wrong-rucio-state")})
    worker = verbose_worker(
        own,
        name,
        {
            "UNEMBARGO_RUCIO_PASSWORD": secrets.wrong_rucio_password,
            "AWS_SECRET_ACCESS_KEY": secrets.s3_secret_key,
        },
    )
    with Session(db_connect(plain.settings.database_url.get_secret_value())) as session:
        [queue] = location_queues(session, name)
    yield {**plain.queues, "register": queue, "tag": queue}, worker
    worker.stop()


def _seed(settings: Settings) -> SeededExposure:
    return seed_small(settings, fresh_day(), 1, extra_objects={"notes.txt": CONTENT.encode()})


async def _client(settings: Settings) -> Client:
    """A client with no codec: what anyone with access to the namespace sees."""
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


def _payloads(node: Any, skip: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Every payload (a dict with metadata and data) in a history's JSON, outside ``skip`` keys."""
    if isinstance(node, dict):
        if "metadata" in node and isinstance(node["metadata"], dict) and "encoding" in node["metadata"]:
            yield node
        for key, value in node.items():
            if key not in skip:
                yield from _payloads(value, skip)
    elif isinstance(node, list):
        for value in node:
            yield from _payloads(value, skip)


def _b64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


async def readable(history_json: str, codec: PayloadCodecAES | None = None) -> str:
    """A history's JSON plus the decoded bytes of every payload in it (decrypted with ``codec``)."""
    found = [history_json]
    for node in _payloads(json.loads(history_json)):
        payload = Payload(
            metadata={k: _b64(v) for k, v in node["metadata"].items()}, data=_b64(node.get("data"))
        )
        if codec is not None:
            [payload] = await codec.decode([payload])
        found.append(payload.data.decode("latin-1"))
        found.extend(v.decode("latin-1") for v in payload.metadata.values())
    return "\n".join(found)


def assert_clean(text: str, secrets: Secrets, where: str) -> None:
    leaked = [what for what, value in secrets.searched().items() if value and value in text]
    assert not leaked, f"{where} holds {', '.join(leaked)}"


async def _failure(handle: WorkflowHandle[object, object]) -> ApplicationError:
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError), cause
    return cause


def _cli(
    settings: Settings, *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``unembargo ARGS`` in a child process with ``settings`` (less ``unset`` variables); its output."""
    full = {**os.environ, **settings.environment(), **(env or {}), "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", *args],
        env={k: v for k, v in full.items() if k not in unset},
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------- secrets and contents


async def test_no_secret_or_file_content_in_histories_logs_or_cli_output(
    plain: Site, wrong_rucio: tuple[StepQueues, WorkerProcess], secrets: Secrets
) -> None:
    """Real runs (completed, failed, refused Rucio login) leave no secret or file content in histories,
    descriptions, worker logs or CLI output."""
    client = await _client(plain.settings)
    settings = plain.settings
    done = _seed(settings)
    conflict = _seed(settings)
    plant_foreign_zip(settings.dest_root / names.zip_relpath("LSSTCam", conflict.day_obs, conflict.obs_id))
    wrong_queues, wrong_worker = wrong_rucio

    completed = await start_one(client, settings, done, FAST, plain.queues)
    failed = await start_one(client, settings, conflict, FAST, plain.queues)
    await completed.result()
    check_unembargoed(settings, done.day_obs, done.obs_id, done.exposure_id, list(done.tracts))
    # The same exposure again, its Rucio steps on the worker with the wrong password: zip, export
    # and ingest find their work done, and register cannot log in.
    retrying = await client.start_workflow(
        names.EXPOSURE_WORKFLOW,
        ExposureInput(Exposure("LSSTCam", done.day_obs, done.obs_id, done.exposure_id), wrong_queues, FAST),
        id=f"security-wrong-rucio-password-{TAG}",
        task_queue=settings.workflow_task_queue,
    )
    assert (await _failure(failed)).type == "DestinationConflict"

    async def login_refused() -> bool:
        pending = (await retrying.describe()).raw_description.pending_activities
        return bool(pending) and pending[0].attempt >= 2 and "uthenticat" in pending[0].last_failure.message

    await poll_until(login_refused, timeout=90, what="the Rucio step to fail its login and be retried")
    described = MessageToJson((await retrying.describe()).raw_description)
    outputs = {
        f"status {conflict.obs_id}": _cli(settings, "status", conflict.obs_id),
        f"status {done.obs_id} --json": _cli(settings, "status", done.obs_id, "--json"),
    }
    outputs["status --day"] = _cli(settings, "status", "--day", str(conflict.day_obs))
    await retrying.terminate("the login was refused, as the test meant")

    token_files = list((settings.state_dir / "rucio" / "token").glob("auth_token_for_account_*"))
    assert token_files, "the worker cached no Rucio token"
    secrets = replace(secrets, rucio_tokens=tuple(p.read_text().strip() for p in token_files))
    # The search can find what it looks for: decoded receipts, and the marker inside the zip.
    completed_text = await readable((await completed.fetch_history()).to_json())
    assert names.zip_relpath("LSSTCam", done.day_obs, done.obs_id) in completed_text
    with zipfile.ZipFile(settings.dest_root / names.zip_relpath("LSSTCam", done.day_obs, done.obs_id)) as zf:
        assert zf.read("notes.txt") == CONTENT.encode()
    for handle in (completed, failed, retrying):
        assert_clean(
            await readable((await handle.fetch_history()).to_json()), secrets, f"history {handle.id}"
        )
    assert_clean(described, secrets, "the description of a run retrying a refused login")
    assert "DestinationConflict" in outputs[f"status {conflict.obs_id}"].stdout
    for what, out in outputs.items():
        assert_clean(out.stdout + out.stderr, secrets, f"the output of `unembargo {what}`")
    assert "zipped" in plain.worker.output()
    assert_clean(plain.worker.output(), secrets, "the worker's log")
    assert "uthenticat" in wrong_worker.output(), wrong_worker.output()[-2000:]
    assert_clean(wrong_worker.output(), secrets, "the DEBUG log of the worker with the wrong password")


# ---------------------------------------------------------------- the payload codec


async def test_encrypted_payloads_are_ciphertext_on_the_server_and_readable_with_the_key(
    sealed: Site, secrets: Secrets, key_file: Path, tmp_path: Path
) -> None:
    """With the payload codec, the server holds only ciphertext; the key reads it back and a wrong or
    missing key is a named error."""
    settings = sealed.settings
    keyed = await connect(settings)
    client = await _client(settings)
    done = _seed(settings)
    conflict = _seed(settings)
    plant_foreign_zip(settings.dest_root / names.zip_relpath("LSSTCam", conflict.day_obs, conflict.obs_id))
    completed = await start_one(keyed, settings, done, FAST, sealed.queues)
    failed = await start_one(keyed, settings, conflict, FAST, sealed.queues)
    state = await completed.result()
    assert state["steps"]["zip"]["receipt"]["file"]["relpath"] == names.zip_relpath(  # type: ignore[index]
        "LSSTCam", done.day_obs, done.obs_id
    )
    check_unembargoed(settings, done.day_obs, done.obs_id, done.exposure_id, list(done.tracts))
    assert (await _failure(failed)).type == "DestinationConflict"
    with pytest.raises(PayloadKeyError):
        await (
            (await connect(settings.model_copy(update={"payload_key_file": None})))
            .get_workflow_handle(completed.id)
            .result()
        )

    codec = PayloadCodecAES(read_key(key_file))
    zip_relpath = names.zip_relpath("LSSTCam", done.day_obs, done.obs_id)
    for run, obs_id in ((completed, done.obs_id), (failed, conflict.obs_id)):
        handle = client.get_workflow_handle(run.id)
        raw = (await handle.fetch_history()).to_json()
        # Search attributes stay plaintext for the UI; headers carry only trace context.
        sealed_payloads = list(_payloads(json.loads(raw), skip=("searchAttributes", "header")))
        assert sealed_payloads
        for node in sealed_payloads:
            assert _b64(node["metadata"]["encoding"]) == ENCODING, node
            assert obs_id.encode() not in _b64(node.get("data")) and b"relpath" not in _b64(node.get("data"))
        plain_text = await readable(raw, codec)
        assert_clean(plain_text, secrets, f"the decrypted history {handle.id}")
        assert_clean(await readable(raw), secrets, f"the raw history {handle.id}")
    conflict_raw = (await client.get_workflow_handle(failed.id).fetch_history()).to_json()
    assert "does not match" not in conflict_raw and "Encoded failure" in conflict_raw
    assert zip_relpath in await readable((await completed.fetch_history()).to_json(), codec)

    with_key = _cli(settings, "status", done.obs_id, "--json")
    assert with_key.returncode == 0, with_key.stderr
    assert zip_relpath in with_key.stdout
    assert_clean(with_key.stdout + with_key.stderr, secrets, "`unembargo status` with the key")
    found = await exposure_status(keyed, "LSSTCam", conflict.obs_id)
    assert found.error_type == "DestinationConflict" and found.error and "does not match" in found.error

    refused = _cli(settings, "status", done.obs_id, unset=("UNEMBARGO_PAYLOAD_KEY_FILE",))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "PayloadKeyError" in refused.stdout and "no payload key is configured" in refused.stdout
    other = tmp_path / "other-key"
    other.write_text(base64.b64encode(new_key()).decode())
    wrong = await connect(settings.model_copy(update={"payload_key_file": other}))
    with pytest.raises(PayloadKeyError, match=f"encrypted with key id {codec.key_id}"):
        await exposure_status(wrong, "LSSTCam", done.obs_id)
    assert_clean(sealed.worker.output(), secrets, "the worker's log (payload codec on)")


# ---------------------------------------------------------------- inputs


async def test_a_workflow_started_with_an_unsafe_name_fails_at_once_and_does_nothing(plain: Site) -> None:
    """The deployed worker refuses an unsafe name that bypassed the CLI and starter, and its real
    activities leave the destination untouched. (Every kind of unsafe name, on stub activities:
    tests/unit/test_exposure_workflow.py.)"""
    client = await _client(plain.settings)
    exposure, queues = Exposure("LSSTCam", 20251231, "../../etc", 1), plain.queues
    before = sorted(plain.settings.dest_root.parent.rglob("*"))
    # Straight through a Temporal client: no CLI and no starter to check the names first.
    handle = await client.start_workflow(
        names.EXPOSURE_WORKFLOW,
        ExposureInput(exposure, queues, FAST),
        id=f"security-bad-input-{uuid.uuid4().hex[:8]}",
        task_queue=plain.settings.workflow_task_queue,
    )
    error = await _failure(handle)
    assert error.type == "InvalidName" and error.non_retryable, error
    assert "nothing was done" in error.message
    history = await handle.fetch_history()
    assert not [e for e in history.events if e.HasField("activity_task_scheduled_event_attributes")]
    assert sorted(plain.settings.dest_root.parent.rglob("*")) == before


async def test_the_starter_refuses_a_batch_with_an_unsafe_name_and_starts_none(plain: Site) -> None:
    """The starter checks the whole batch first: one unsafe name and no workflow is started on the server."""
    client = await _client(plain.settings)
    good = Exposure("LSSTCam", fresh_day(), f"MC_O_SEC_{uuid.uuid4().hex[:8]}", 1)
    bad = Exposure("LSSTCam", good.day_obs, "MC_O/../../x", 2)
    with pytest.raises(names.InvalidName):
        await start_exposures(client, plain.settings.workflow_task_queue, [good, bad], plain.queues, FAST)
    with pytest.raises(RPCError):
        await client.get_workflow_handle(names.workflow_id(good.instrument, good.obs_id)).describe()


@pytest.mark.parametrize(
    "args",
    [
        ("start", "--instrument", "../LSSTCam", "--day", "20251231", "--dry-run"),
        ("status", "../../etc"),
        ("retry", "MC_O/../x"),
    ],
    ids=["start", "status", "retry"],
)
def test_the_cli_refuses_unsafe_names_with_a_named_error(plain: Site, args: tuple[str, ...]) -> None:
    """The CLI refuses unsafe names with a named error and exit code 2, no traceback."""
    out = _cli(plain.settings, *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "is not a valid name" in out.stderr or "is not a YYYYMMDD date" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- paths


async def test_an_object_key_cannot_place_a_file_outside_the_destination(plain: Site) -> None:
    """A Windows-style traversal key in the real bucket fails the run as UnsafeKey; nothing is written
    anywhere."""
    client = await _client(plain.settings)
    key = "..\\..\\..\\escape.json"  # a Windows-style traversal; test_zip runs "../"
    seeded = seed_small(plain.settings, fresh_day(), 1, extra_objects={key: b"{}"})
    error = await _failure(await start_one(client, plain.settings, seeded, FAST, plain.queues))
    assert error.type == "UnsafeKey" and "nothing was written" in error.message, error
    final = plain.settings.dest_root / names.zip_relpath("LSSTCam", seeded.day_obs, seeded.obs_id)
    assert not final.exists() and not list(final.parent.glob(".*partial"))
    assert not list(plain.settings.dest_root.parent.parent.rglob("escape.json"))


async def test_a_symlinked_day_folder_cannot_lead_the_zip_outside(plain: Site, tmp_path: Path) -> None:
    """A day folder symlinked out of the destination root fails the run as UnsafeKey; nothing lands
    outside."""
    client = await _client(plain.settings)
    seeded = seed_small(plain.settings, fresh_day(), 1)
    outside = tmp_path / "outside"
    outside.mkdir()
    day = plain.settings.dest_root / names.day_relpath("LSSTCam", seeded.day_obs)
    day.parent.mkdir(parents=True, exist_ok=True)
    day.symlink_to(outside, target_is_directory=True)
    error = await _failure(await start_one(client, plain.settings, seeded, FAST, plain.queues))
    assert error.type == "UnsafeKey" and "would leave the destination root" in error.message, error
    assert list(outside.iterdir()) == []
