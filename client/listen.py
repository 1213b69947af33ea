"""``unembargo listen``: the HTTP endpoint bucket notifications are pushed to (POST /notify).

A 2xx answer means Temporal has durably recorded every object of the request as a signal
to its exposure's arrival workflow (signal-with-start of ``arrival-<inst>-<obs_id>``);
anything else means nothing was recorded and the sender should retry (5xx) or fix the
request (4xx, named reason). Duplicates are no-ops in the workflow, so a retried
notification is harmless.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.client import Client

from unembargo.adapters.notifications import REASONS, Rejected, parse_notification
from unembargo.engine.arrivals import arrival_policy, arrival_queue, signal_arrival
from unembargo.models.arrival import ListenSettings, ObjectEvent
from unembargo.models.settings import Settings

SECRET_HEADER = "X-Unembargo-Secret"
# Accepts one object event; returns "signalled", or "closed" for an exposure whose
# arrival already completed (the event is a late duplicate).
Accepter = Callable[[ObjectEvent], Awaitable[str]]


def temporal_accepter(client: Client, settings: Settings) -> Accepter:
    queue = arrival_queue(settings)
    policy = arrival_policy(settings)

    async def accept(ev: ObjectEvent) -> str:
        return await signal_arrival(client, settings, queue, policy, ev)

    return accept


@dataclass
class Counters:
    """Requests by outcome and events by what became of them, for /metrics."""

    requests: Counter[str]
    events: Counter[str]


def make_app(accept: Accepter, secret: bytes, bucket: str, prefix: str, listen: ListenSettings) -> Starlette:
    """The ASGI app: POST /notify, GET /metrics, GET /healthz."""
    counters = Counters(Counter(), Counter())
    gate = asyncio.Semaphore(listen.notify_max_concurrency)

    def refuse(reason: str, detail: str = "") -> Response:
        counters.requests[reason] += 1
        status, meaning = REASONS[reason]
        body = {"error": reason, "meaning": meaning, **({"detail": detail} if detail else {})}
        return JSONResponse(body, status_code=status)

    async def notify(request: Request) -> Response:
        if gate.locked():
            return refuse("busy")
        async with gate:
            body = await _read_limited(request, listen.notify_max_body)
            if body is None:
                return refuse("too_large")
            try:
                parsed = parse_notification(body, secret, request.headers.get(SECRET_HEADER), bucket, prefix)
            except Rejected as err:
                return refuse(err.reason, err.detail)
            # Every event durably signalled before the answer; a failure answers 503 (retry).
            try:
                outcomes = await asyncio.gather(*(accept(ev) for ev in parsed.events))
            except Exception as err:  # noqa: BLE001 - Temporal down or refusing: the sender retries
                counters.requests["unavailable"] += 1
                return JSONResponse(
                    {
                        "error": "unavailable",
                        "meaning": f"Temporal did not accept ({type(err).__name__}); retry",
                    },
                    status_code=503,
                )
            counters.requests["accepted"] += 1
            counters.events.update(outcomes)
            counters.events["ignored"] += parsed.ignored
            return JSONResponse({"accepted": len(parsed.events), "ignored": parsed.ignored}, status_code=200)

    async def metrics(request: Request) -> Response:
        lines = ["# TYPE unembargo_notify_requests_total counter"]
        lines += [
            f'unembargo_notify_requests_total{{outcome="{k}"}} {v}'
            for k, v in sorted(counters.requests.items())
        ]
        lines += ["# TYPE unembargo_notify_events_total counter"]
        lines += [
            f'unembargo_notify_events_total{{outcome="{k}"}} {v}' for k, v in sorted(counters.events.items())
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    app = Starlette(
        routes=[
            Route("/notify", notify, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    app.state.counters = counters
    return app


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None once it exceeds ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def serve(client: Client, settings: Settings, listen: ListenSettings, secret: bytes) -> None:
    """Serve until cancelled, on ``listen_host:listen_port`` (loopback unless set otherwise)."""
    import uvicorn

    app = make_app(
        temporal_accepter(client, settings), secret, settings.s3_bucket, settings.s3_prefix, listen
    )
    config = uvicorn.Config(
        app,
        host=listen.listen_host,
        port=listen.listen_port,
        log_level="warning",
        # Connections beyond this get 503 from uvicorn itself, before any body is read.
        limit_concurrency=listen.notify_max_concurrency * 2,
        access_log=False,
    )
    await uvicorn.Server(config).serve()
