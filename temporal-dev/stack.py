"""The local stack as one unit: ``up`` starts what is not running, ``down`` stops
exactly what ``up`` started, ``status`` tells each service's address and health.

    >>> from unembargo.models.settings import Settings
    >>> [row.name for row in status(Settings())]  # doctest: +SKIP
    ['postgres', 's3', 'temporal', 'rucio', 'worker', 'listen', 'tape', 'broker', 'web']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unembargo.adapters.s3 import use_loopback_credentials
from unembargo.devstack import broker, listen, postgres, procs, rucio_server, s3, tape, temporal, web, worker
from unembargo.models.settings import Settings

if TYPE_CHECKING:
    from unembargo.devstack.seed import SeededExposure


@dataclass(frozen=True)
class Service:
    """How the stack starts, checks and stops one service."""

    name: str
    ensure: Callable[[Settings], str]
    health: Callable[[Settings], tuple[bool, str]]
    stop: Callable[[Settings], bool]
    address: Callable[[Settings], str]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    healthy: bool
    detail: str
    pid: int | None


# Start order; stopped in reverse. Rucio needs PostgreSQL; the worker needs all.
SERVICES = [
    Service("postgres", postgres.ensure, postgres.health, postgres.stop, postgres.address),
    Service("s3", s3.ensure, s3.health, s3.stop, s3.address),
    Service("temporal", temporal.ensure, temporal.health, temporal.stop, temporal.address),
    Service(
        "rucio",
        lambda st: rucio_server.ensure(st, postgres.url(st)),
        rucio_server.health,
        rucio_server.stop,
        lambda st: st.rucio_host,
    ),
    Service("worker", worker.ensure, worker.health, worker.stop, worker.address),
    # Bucket notifications -> arrival workflows (the seeder posts them: moto does not push).
    Service("listen", listen.ensure, listen.health, listen.stop, listen.address),
    # The tape location's migration (cache -> tape after a delay) for the rawintegrity flow.
    Service("tape", tape.ensure, tape.health, tape.stop, tape.address),
    # The carousel flow's STOMP broker (coilmq, in memory; RabbitMQ or ActiveMQ in production).
    Service("broker", broker.ensure, broker.health, broker.stop, broker.address),
    # The dataflow page (`unembargo web`, read-only), on UNEMBARGO_WEB_PORT.
    Service("web", web.ensure, web.health, web.stop, web.address),
]


def up(settings: Settings, on_step: Callable[[str, str], None] = lambda n, a: None) -> dict[str, str]:
    """Bring every service up; returns name -> 'started' | 'already up' | 'reused'."""
    use_loopback_credentials(settings.s3_endpoint_url)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # The local destination "disk"; in production it is a mount the workers require.
    settings.dest_root.mkdir(parents=True, exist_ok=True)
    actions: dict[str, str] = {}
    for service in SERVICES:
        actions[service.name] = service.ensure(settings)
        on_step(service.name, actions[service.name])
    return actions


def seed_arrivals(settings: Settings, file_size: int = 64 * 1024) -> list[SeededExposure] | None:
    """Send ``seed.ARRIVAL_EXPOSURES`` through the endpoint (None when it is not up)."""
    from unembargo.devstack.seed import seed_arrivals as send

    if not listen.health(settings)[0]:
        return None
    return send(settings, listen.address(settings), listen.ensure_secret(settings), file_size=file_size)


def down(settings: Settings) -> dict[str, bool]:
    """Stop, in reverse order, each service this stack started; name -> stopped."""
    return {service.name: service.stop(settings) for service in reversed(SERVICES)}


def status(settings: Settings) -> list[ServiceStatus]:
    """Each service's address, health and (when this stack started it) PID."""
    rows = []
    for service in SERVICES:
        healthy, detail = service.health(settings)
        rec = procs.recorded(settings.state_dir, service.name)
        rows.append(
            ServiceStatus(
                service.name, service.address(settings), healthy, detail, rec.pid if rec else None
            )  # fmt: skip
        )
    return rows
