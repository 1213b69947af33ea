"""A private stack for fault injection: its own PostgreSQL, S3, Temporal and Rucio.

The fault tests stop, freeze and restart services, so they never use the shared test
stack (other sessions rely on it). This stack lives under ``.dev/fault-stack`` on a
port block of its own, is started with the same code as ``unembargo dev up``
(``stack.SERVICES``) and is torn down when the tests end. S3 is reached through a
loopback TCP proxy, so an outage can refuse connections while moto, which keeps
objects only in memory, keeps the bucket.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from support import PORT_BASE, REPO, STACK_DIR
from tcp_proxy import TcpProxy
from unembargo.devstack import postgres, procs, rucio_server, stack
from unembargo.devstack.rucio_server import RucioPaths, venv_ready
from unembargo.models.settings import Settings

FAULT_DIR = REPO / ".dev" / "fault-stack"
SERVICES = ("postgres", "s3", "temporal", "rucio")
# Offsets in the block: moto itself, Temporal, its UI, Rucio, PostgreSQL, the S3 proxy.
PORTS = {"moto": 1, "temporal": 2, "ui": 3, "rucio": 4, "postgres": 5, "proxy": 6}


def port_base() -> int:
    """A block of ten ports derived from this checkout's path, never the test stack's block.

    Below 32768, the start of Linux's ephemeral range, so no outgoing connection holds one
    of these ports when a service restarts on it.
    """
    digest = int(hashlib.sha1(str(FAULT_DIR).encode()).hexdigest(), 16)
    base = 20000 + digest % 1270 * 10
    return base + 10 if base == PORT_BASE else base


def fault_settings() -> Settings:
    """The private stack's services: loopback ports of its own, state under FAULT_DIR."""
    base = port_base()
    pg_url = f"postgresql://postgres@127.0.0.1:{base + PORTS['postgres']}/postgres"
    return Settings(
        state_dir=FAULT_DIR,
        temporal_address=f"127.0.0.1:{base + PORTS['temporal']}",
        temporal_ui_url=f"http://127.0.0.1:{base + PORTS['ui']}",
        # The workers and the tests reach S3 through the proxy; moto listens behind it.
        s3_endpoint_url=f"http://127.0.0.1:{base + PORTS['proxy']}",
        rucio_host=f"http://127.0.0.1:{base + PORTS['rucio']}",
        rucio_password_file=FAULT_DIR / "rucio" / "password",
        dest_root=FAULT_DIR / "dest" / "raw",
        database_url=f"sqlite:///{FAULT_DIR / 'unembargo.db'}",
        postgres_url=pg_url,
        postgres_private_port=base + PORTS["postgres"],
    )


def moto_settings(settings: Settings) -> Settings:
    """The same settings with S3 at moto itself (to start it, behind the proxy)."""
    return settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port_base() + PORTS['moto']}"})


def share_rucio_venv(settings: Settings) -> None:
    """Reuse the test stack's Rucio server venv (read only) when it is complete; else one is built."""
    ours = RucioPaths.of(settings)
    theirs = RucioPaths(state_dir=STACK_DIR.resolve(), root=STACK_DIR.resolve() / "rucio")
    if ours.venv.exists() or ours.venv.is_symlink() or not venv_ready(theirs):
        return
    ours.root.mkdir(parents=True, exist_ok=True)
    ours.venv.symlink_to(theirs.venv, target_is_directory=True)


@dataclass
class FaultStack:
    """The running private stack and the handles the fault tests act on."""

    settings: Settings
    proxy: TcpProxy
    started: list[str] = field(default_factory=list)

    def service(self, name: str) -> stack.Service:
        return next(s for s in stack.SERVICES if s.name == name)

    def stop(self, name: str) -> None:
        """Really stop one service (PostgreSQL, Rucio or Temporal)."""
        assert self.service(name).stop(self.settings), f"{name} was not running"

    def start(self, name: str) -> None:
        """Start one service again on the same state (Temporal's file, PostgreSQL's cluster).

        After PostgreSQL, Rucio is restarted too: its pooled connections died with the server,
        and each Rucio process would fail one request on them, whoever sent it (a later
        step, the tests' own checks, the next test's setup).
        """
        if name == "rucio":
            rucio_server.ensure(self.settings, postgres.url(self.settings))
            return
        self.service(name).ensure(self.settings)
        if name == "postgres":
            self.stop("rucio")
            self.start("rucio")

    def pid(self, name: str) -> int:
        rec = procs.recorded(self.settings.state_dir, name)
        assert rec is not None, f"{name} is not running"
        return rec.pid


def up() -> FaultStack:
    """Start the private stack; refuse if one of its ports is taken by something else."""
    settings = fault_settings()
    FAULT_DIR.mkdir(parents=True, exist_ok=True)
    base = port_base()
    for name, offset in PORTS.items():
        if procs.port_open("127.0.0.1", base + offset):
            raise procs.StackError(f"port {base + offset} ({name}) of the fault stack is taken; run down()")
    share_rucio_venv(settings)
    # A fresh Temporal state per run: it is kept across the restart a test injects, not across runs.
    for stale in FAULT_DIR.glob("temporal.db*"):
        stale.unlink()
    proxy = TcpProxy(("127.0.0.1", base + PORTS["moto"]), base + PORTS["proxy"])
    proxy.start()
    fault = FaultStack(settings, proxy)
    try:
        for service in stack.SERVICES:
            if service.name not in SERVICES:
                continue
            own = moto_settings(settings) if service.name == "s3" else settings
            service.ensure(own)
            fault.started.append(service.name)
    except BaseException:
        down(fault)
        raise
    return fault


def down(fault: FaultStack) -> None:
    """Stop every service of the private stack, in reverse order, and the proxy."""
    for service in reversed(stack.SERVICES):
        if service.name in fault.started:
            service.stop(fault.settings)
    fault.proxy.refuse()


def use_endpoint(settings: Settings) -> dict[str, str]:
    """Point this process's lsst-resources at the private S3; the previous value, to restore."""
    previous = {"S3_ENDPOINT_URL": os.environ.get("S3_ENDPOINT_URL", "")}
    assert settings.s3_endpoint_url is not None
    os.environ["S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return previous
