"""PostgreSQL for the local stack: reuse a reachable server, else start a private one.

The private cluster lives in ``<state>/postgres`` and listens on loopback only.
The URL actually in use is recorded in ``<state>/run/postgres.url`` for the
services that need it (Rucio).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from unembargo.devstack import procs
from unembargo.models.settings import Settings

NAME = "postgres"


def _reachable(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _private_url(settings: Settings) -> str:
    return f"postgresql://postgres@127.0.0.1:{settings.postgres_private_port}/postgres"


def _url_file(settings: Settings) -> Path:
    return settings.state_dir / "run" / "postgres.url"


def url(settings: Settings) -> str:
    """The admin URL in use: the configured server, or the private one."""
    recorded = _url_file(settings)
    if recorded.exists():
        return recorded.read_text().strip()
    return settings.postgres_url.get_secret_value()


def address(settings: Settings) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url(settings))
    return f"{parts.hostname}:{parts.port or 5432}"


def health(settings: Settings) -> tuple[bool, str]:
    if _reachable(url(settings)):
        owned = procs.recorded(settings.state_dir, NAME) is not None
        return True, "private cluster" if owned else "reused"
    return False, "not reachable"


def _bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")) or [shutil.which(tool) or ""]
    if not found[-1]:
        raise procs.StackError(f"PostgreSQL is not reachable and `{tool}` is not installed")
    return found[-1]


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _data_dir(settings: Settings) -> Path:
    """Where the private cluster keeps its files: ``<state>/postgres``, unless the server's
    user cannot reach it (we are root and a parent folder is private to root, as a clone in
    a ``mktemp -d`` folder is); then a folder of the OS temp dir named after that path."""
    data = (settings.state_dir / NAME).resolve()
    data.parent.mkdir(parents=True, exist_ok=True)
    reachable = subprocess.run(_as_postgres_user(["test", "-x", str(data.parent)])).returncode == 0
    if os.geteuid() != 0 or reachable:
        return data
    digest = hashlib.sha1(str(data).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"unembargo-postgres-{digest}"


def ensure(settings: Settings) -> str:
    """Use the configured server if it answers, else init and start a private cluster."""
    if _reachable(url(settings)):
        return "already up" if procs.recorded(settings.state_dir, NAME) else "reused"
    data = _data_dir(settings)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        subprocess.run(
            _as_postgres_user([_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
            check=True,
            capture_output=True,
        )
    argv = [_bin("postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(settings.postgres_private_port),
            "-k", str(data)]  # fmt: skip
    procs.start(settings.state_dir, NAME, _as_postgres_user(argv))
    procs.poll(lambda: _reachable(_private_url(settings)), 60, "the private PostgreSQL")
    _url_file(settings).write_text(_private_url(settings))
    return "started"


def stop(settings: Settings) -> bool:
    """Fast shutdown (SIGINT): sessions are ended at once, as a server going down ends them;
    SIGTERM would wait for every client, and Rucio's pool never lets go."""
    stopped = procs.stop(settings.state_dir, NAME, first=signal.SIGINT)
    if stopped:
        _url_file(settings).unlink(missing_ok=True)
    return stopped
