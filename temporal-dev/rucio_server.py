"""A real Rucio server for the local stack, in its own venv, on PostgreSQL, on loopback.

    >>> ensure(Settings(), "postgresql://postgres@127.0.0.1:5432/postgres")  # doctest: +SKIP
    'started'

Everything lives under ``<state_dir>/rucio/``: ``venv/`` (PyPI ``rucio[postgresql]`` at the
version of the app's rucio-clients, plus gunicorn), ``rucio.cfg``, ``alembic.ini`` and
``client.cfg``. The server pins its own Flask/SQLAlchemy, so it never shares the app venv.
Its catalog is the database ``unembargo_rucio_<hash of the state dir>``. The root password
is generated once into ``settings.rucio_password_file`` (0600) and reaches the bootstrap
script on stdin only. Rucio's judge-evaluator and judge-cleaner run beside the server, from
the same venv and ``rucio.cfg``, and stop with it.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from unembargo.adapters.rucio_client import connect
from unembargo.devstack import procs
from unembargo.devstack.procs import StackError
from unembargo.models import names
from unembargo.models.settings import Settings, host_port

if TYPE_CHECKING:
    from rucio.client import Client

SERVICE = "rucio"
DATABASE_PREFIX = "unembargo_rucio"
BOOTSTRAP = Path(__file__).with_name("rucio_bootstrap.py")
# The PFN that must equal the destination file (design: files are registered in place).
PROBE = ("LSSTCam", 20251231, "MC_O_20251231_000010")
# pip into an empty venv took 25-50 s here; the server answers /ping about 2 s after start.
PIP_TIMEOUT_S = 900.0
START_TIMEOUT_S = 90.0
# Pinned for --no-control-socket: by default gunicorn 27 puts a socket in ~/.gunicorn.
GUNICORN_VERSION = "27.0.1"
# Two processes use both cores (per-call cost is CPU: JSON schema checks); threads cover I/O waits.
GUNICORN_WORKERS = 2
GUNICORN_THREADS = 4
FILE_PROTOCOL_IMPL = "rucio.rse.protocols.posix.Default"
# Rucio's own daemons, run beside the server on its database (the rucio package ships them):
# the judge-evaluator gives files attached to a dataset the locks of the dataset's rules (the
# carousel keeps staging an open dataset by it); the judge-cleaner removes rules that expired (a
# deleted rule is set to expire within the hour). Short sleeps: the stack's catalog is small.
DAEMONS = ("judge-evaluator", "judge-cleaner")
DAEMON_SLEEP_S = 2


@dataclass(frozen=True)
class RucioPaths:
    """Where the local Rucio server keeps its venv and configuration."""

    state_dir: Path
    root: Path

    @classmethod
    def of(cls, settings: Settings) -> RucioPaths:
        """Paths under the settings' state dir, made absolute so configs do not depend on cwd."""
        state = settings.state_dir.resolve()
        return cls(state_dir=state, root=state / "rucio")

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def server_cfg(self) -> Path:
        return self.root / "rucio.cfg"

    @property
    def alembic_ini(self) -> Path:
        return self.root / "alembic.ini"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def database(self) -> str:
        """The PostgreSQL database of this state dir's Rucio (one per state dir)."""
        # Stacks sharing one PostgreSQL (dev and the test stack) must not share Rucio's root
        # account: each keeps its own password file, and each bootstrap would reset the other's.
        return f"{DATABASE_PREFIX}_{hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]}"

    def site_packages(self) -> Path:
        """The server venv's site-packages (its Python version is whatever created it)."""
        found = sorted(self.venv.glob("lib/python3*/site-packages"))
        if not found:
            raise StackError(f"no site-packages in {self.venv}")
        return found[-1]


def ensure(settings: Settings, pg_admin_url: str) -> str:
    """Bring up whatever is missing of the server, scope and RSE: 'started' or 'already up'."""
    host, port = loopback_address(settings.rucio_host)
    paths = RucioPaths.of(settings)
    paths.root.mkdir(parents=True, exist_ok=True)
    with _locked(paths.root / ".lock"):
        if health(settings)[0]:
            if procs.recorded(paths.state_dir, SERVICE) is not None:
                ensure_daemons(paths)
            ensure_catalog(settings)
            return "already up"
        ours = procs.recorded(paths.state_dir, SERVICE)
        if ours is not None:
            raise StackError(
                f"the Rucio server started earlier (pid {ours.pid}) does not answer /ping; see "
                f"{procs.logfile(paths.state_dir, SERVICE)}, then stop it and bring it up again"
            )
        if procs.port_open(host, port):
            raise StackError(
                f"{host}:{port} accepts connections but does not answer Rucio /ping: "
                "stop what listens there or set UNEMBARGO_RUCIO_HOST to a free port"
            )
        password = ensure_password(settings)
        ensure_venv(paths)
        ensure_database(pg_admin_url, paths.database)
        db_url = database_url(pg_admin_url, paths.database)
        write_server_configs(paths, db_url, settings.rucio_username)
        bootstrap(paths, settings.rucio_username, password)
        start_server(paths, settings, host, port)
        ensure_daemons(paths)
        ensure_catalog(settings)
        return "started"


def health(settings: Settings) -> tuple[bool, str]:
    """(True, version) if the Rucio server answers /ping, else (False, why)."""
    url = f"{settings.rucio_host.rstrip('/')}/ping"
    # No proxy: an http_proxy in the environment must not see (or break) loopback calls.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as reply:
            version = json.load(reply)["version"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return False, f"Rucio not answering at {url}: {err}"
    return True, f"Rucio {version} at {settings.rucio_host}"


def stop(settings: Settings) -> bool:
    """Stop the Rucio server this stack started, and its daemons; True if the server was running."""
    state_dir = RucioPaths.of(settings).state_dir
    for daemon in DAEMONS:
        procs.stop(state_dir, daemon_service(daemon))
    return procs.stop(state_dir, SERVICE)


def daemon_service(daemon: str) -> str:
    """The name a Rucio daemon's process is recorded (and logged) under."""
    return f"{SERVICE}-{daemon}"


def ensure_daemons(paths: RucioPaths) -> None:
    """Start each of Rucio's daemons that is not running, with the server's rucio.cfg."""
    for daemon in DAEMONS:
        if procs.recorded(paths.state_dir, daemon_service(daemon)) is None:
            argv = [str(paths.venv / "bin" / f"rucio-{daemon}"), "--sleep-time", str(DAEMON_SLEEP_S)]
            procs.start(paths.state_dir, daemon_service(daemon), argv, env=server_env(paths), cwd=paths.root)


def loopback_address(url: str) -> tuple[str, int]:
    """(host, port) of the server URL, refusing anything but loopback: the dev server has no TLS."""
    host, port = host_port(url)
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise StackError(f"the local Rucio server only listens on loopback, not {host!r} ({url})")
    return host, port


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise bring-ups sharing a state dir, so two callers never pip-install or start twice."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_password(settings: Settings) -> str:
    """The root password: from the settings, else from its file, generated (0600) on first use."""
    if settings.rucio_password is None:
        path = settings.rucio_password_file
        if path is None:
            raise StackError("set UNEMBARGO_RUCIO_PASSWORD or UNEMBARGO_RUCIO_PASSWORD_FILE")
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24) + "\n")
    return settings.rucio_secret()


def rucio_version() -> str:
    """The server version to install: the same as the app's client, so both speak one API."""
    return metadata.version("rucio-clients")


def migrations_dir(paths: RucioPaths) -> Path:
    """Rucio's alembic scripts, inside the server venv."""
    return paths.site_packages() / "rucio" / "db" / "sqla" / "migrate_repo"


def venv_ready(paths: RucioPaths) -> bool:
    """True if the server venv has rucio (with its migrations) and gunicorn."""
    if not (paths.venv / "bin" / "gunicorn").exists():
        return False
    try:
        return (migrations_dir(paths) / "env.py").exists()
    except StackError:
        return False


def ensure_venv(paths: RucioPaths) -> None:
    """Create the server venv and pip-install Rucio into it, unless it already has it."""
    if venv_ready(paths):
        return
    log = procs.logfile(paths.state_dir, "rucio-pip")
    log.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(paths.venv)],
        [
            str(paths.venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-cache-dir",
            f"rucio[postgresql]=={rucio_version()}",
            f"gunicorn=={GUNICORN_VERSION}",
        ],
    ]
    with open(log, "ab") as out:
        for argv in steps:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=PIP_TIMEOUT_S)
            if done.returncode != 0:
                raise StackError(f"installing the Rucio server failed ({argv[2]}); see {log}")
    if not venv_ready(paths):
        raise StackError(f"pip finished but {paths.venv} has no rucio server; see {log}")


def database_url(pg_admin_url: str, database: str) -> str:
    """SQLAlchemy URL of ``database`` on the same PostgreSQL as the admin URL (psycopg 3 driver)."""
    parts = urlsplit(pg_admin_url)
    return urlunsplit(("postgresql+psycopg", parts.netloc, f"/{database}", parts.query, ""))


def ensure_database(pg_admin_url: str, database: str) -> None:
    """Create the PostgreSQL database if it does not exist yet."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if found.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def _ini_value(value: str) -> str:
    """Escape '%' for configparser interpolation (a percent-encoded password in a URL)."""
    return value.replace("%", "%%")


def server_cfg_text(paths: RucioPaths, db_url: str, username: str) -> str:
    """rucio.cfg of the server: PostgreSQL, generic policy, root with a userpass identity only."""
    # The password is not here: the bootstrap script sets it in memory from stdin.
    # Without a [metadata] section Rucio uses its JSON plugin (arcBackup needs it).
    return f"""[common]
logdir = {paths.log_dir}
loglevel = INFO

[database]
default = {_ini_value(db_url)}
pool_size = 10
max_overflow = 10
pool_reset_on_return = rollback
echo = False

[alembic]
cfg = {paths.alembic_ini}

[bootstrap]
userpass_identity = {username}
userpass_email = root@localhost
x509_identity =
x509_email =
gss_identity =
gss_email =
ssh_identity =
ssh_email =

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash

[monitor]
enable_metrics = False
"""


def alembic_ini_text(paths: RucioPaths, db_url: str) -> str:
    """alembic.ini that build_database stamps with: Rucio's own migration scripts."""
    return f"""[alembic]
script_location = {migrations_dir(paths)}
sqlalchemy.url = {_ini_value(db_url)}

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARN
handlers = console
qualname =

[logger_sqlalchemy]
level = WARN
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` (mode 0600: it may hold a database password) only if it differs."""
    if path.exists() and path.read_text() == text:
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


def write_server_configs(paths: RucioPaths, db_url: str, username: str) -> None:
    """Write rucio.cfg and alembic.ini for the server and the bootstrap script."""
    write_if_changed(paths.server_cfg, server_cfg_text(paths, db_url, username))
    write_if_changed(paths.alembic_ini, alembic_ini_text(paths, db_url))


def server_env(paths: RucioPaths) -> dict[str, str]:
    """Environment of server-side processes: our rucio.cfg only, no user site-packages."""
    return {"RUCIO_CONFIG": str(paths.server_cfg), "PYTHONNOUSERSITE": "1"}


def bootstrap(paths: RucioPaths, username: str, password: str) -> None:
    """Run rucio_bootstrap.py in the server venv (schema, base VO, root), password on stdin."""
    log = procs.logfile(paths.state_dir, "rucio-bootstrap")
    with open(log, "ab") as out:
        done = subprocess.run(
            [str(paths.venv / "bin" / "python"), str(BOOTSTRAP), username],
            input=password.encode(),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **server_env(paths)},
            cwd=paths.root,
            timeout=300,
        )
    if done.returncode != 0:
        raise StackError(f"bootstrapping the Rucio database failed; see {log}")


def start_server(paths: RucioPaths, settings: Settings, host: str, port: int) -> None:
    """Start gunicorn on loopback, recorded by PID, and wait until /ping answers."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [
        str(paths.venv / "bin" / "gunicorn"),
        "--bind",
        bind,
        "--workers",
        str(GUNICORN_WORKERS),
        "--threads",
        str(GUNICORN_THREADS),
        "--timeout",
        "120",
        "--no-control-socket",
        "rucio.web.rest.flaskapi.v1.main:application",
    ]
    procs.start(paths.state_dir, SERVICE, argv, env=server_env(paths), cwd=paths.root)
    answered = procs.poll(
        lambda: health(settings)[0] or procs.recorded(paths.state_dir, SERVICE) is None,
        START_TIMEOUT_S,
        raise_on_timeout=False,
    )
    log = procs.logfile(paths.state_dir, SERVICE)
    if procs.recorded(paths.state_dir, SERVICE) is None:
        raise StackError(f"the Rucio server exited during start; see {log}")
    if not answered:
        procs.stop(paths.state_dir, SERVICE)
        raise StackError(f"Rucio did not answer /ping within {START_TIMEOUT_S:.0f}s; see {log}")


def ensure_catalog(settings: Settings) -> None:
    """The application's scope and destination RSE exist, and PFNs land on destination files."""
    from rucio.common.exception import CannotAuthenticate

    try:
        client = connect(settings)
    except CannotAuthenticate as err:
        raise StackError(
            f"Rucio at {settings.rucio_host} rejected user {settings.rucio_username!r}: it was "
            "set up with another password; stop that server and bring it up again, which "
            "re-sets the password from the password file"
        ) from err
    ensure_scope(client, settings.rucio_account, settings.rucio_scope)
    ensure_rse(client, settings.rucio_rse, settings.rse_prefix)
    check_pfn(client, settings.rucio_rse, settings.rucio_scope, settings.dest_root)


def ensure_scope(client: Client, account: str, scope: str) -> None:
    """Create ``scope`` for ``account`` unless it exists (owned by anyone)."""
    if scope not in client.list_scopes():
        client.add_scope(account, scope)


# What the stack's file protocol allows by default; an RSE the conveyor copies between also
# needs third-party copies on its wan domain.
Domains = dict[str, dict[str, int]]
FILE_DOMAINS: Domains = {
    "lan": {"read": 1, "write": 1, "delete": 1},
    "wan": {"read": 1, "write": 1, "delete": 1},
}


def ensure_rse(client: Client, rse: str, prefix: Path, domains: Domains = FILE_DOMAINS) -> None:
    """A deterministic RSE whose file PFN is prefix/scope/name, so files register where they lie."""
    from rucio.common.exception import RSENotFound

    try:
        info = client.get_rse(rse)
    except RSENotFound:
        client.add_rse(rse, deterministic=True)
        info = client.get_rse(rse)
    if not info["deterministic"]:
        raise StackError(f"RSE {rse} exists but is not deterministic; use another rucio_rse")
    if client.list_rse_attributes(rse).get("lfn2pfn_algorithm") != "identity":
        client.add_rse_attribute(rse, "lfn2pfn_algorithm", "identity")
    ensure_file_protocol(client, rse, prefix, info.get("protocols") or [], domains)


def ensure_file_protocol(
    client: Client,
    rse: str,
    prefix: Path,
    protocols: list[dict[str, object]],
    domains: Domains = FILE_DOMAINS,
) -> None:
    """Add the posix ``file`` protocol at ``prefix``; refuse to move an existing one elsewhere."""
    wanted = str(prefix.resolve()).rstrip("/") + "/"
    for proto in protocols:
        if proto.get("scheme") != "file":
            continue
        if str(proto.get("prefix", "")).rstrip("/") + "/" != wanted:
            raise StackError(
                f"RSE {rse} has its file protocol at {proto.get('prefix')!r}, expected {wanted!r}: "
                "replicas registered there would point at the wrong files; use another rucio_rse"
            )
        return
    client.add_protocol(
        rse,
        {
            "scheme": "file",
            "hostname": "",
            "port": 0,
            "prefix": wanted,
            "impl": FILE_PROTOCOL_IMPL,
            "domains": domains,
        },
    )


def pfn_path(client: Client, rse: str, scope: str, name: str) -> Path:
    """The local path Rucio assigns to scope:name on a file RSE."""
    lfn = f"{scope}:{name}"
    pfn = client.lfns2pfns(rse, [lfn], operation="write", scheme="file")[lfn]
    return Path(urlsplit(pfn).path)


def check_pfn(client: Client, rse: str, scope: str, dest_root: Path) -> None:
    """Fail unless the PFN of a zip is exactly its destination file (dest_root/name)."""
    name = names.zip_relpath(*PROBE)
    got = pfn_path(client, rse, scope, name)
    want = dest_root.resolve() / name
    if got != want:
        raise StackError(
            f"RSE {rse} maps {scope}:{name} to {got}, but the file is at {want}: "
            f"dest_root's last component must be the scope ({scope!r})"
        )
