"""The dataflow page's web application: server-rendered pages, their JSON under ``/api/``,
Prometheus metrics at ``/metrics``, and (with ``actions_enabled``, behind the token) retry,
reset and an operator's decision.

    >>> app = create_app(WebConfig())  # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8088)  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from temporalio.service import RPCError, RPCStatusCode

from unembargo.engine.connection import unanswered as unanswered_reason
from unembargo.engine.errors import SourceUnavailable, TemporalUnreachable
from unembargo.models.names import InvalidName
from unembargo.models.web_actions import WebAction
from unembargo.web import views
from unembargo.web.auth import COOKIE, OPERATOR_COOKIE, authorized, cookie_value, operator_name, who
from unembargo.web.config import WebConfig
from unembargo.web.flows import ALL, BY_NAME, FLOWS, STATES, Flow
from unembargo.web.source import Source, TemporalSource

log = logging.getLogger(__name__)
# Every action, one line each: who, what, to which unit, the outcome (never the token).
actions_log = logging.getLogger("unembargo.web.actions")

TEMPLATES = Path(__file__).parent / "templates"
# Actions listed by /api/actions, and on a unit's page.
RECENT_ACTIONS = 50

Handler = Callable[[Request], Awaitable[Response]]
# A form here holds a token, a step or a decision: a few hundred bytes.
MAX_FORM = 4096


async def _form(request: Request) -> dict[str, str]:
    """A URL-encoded form's fields (the only kind the pages send); anything else is empty."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    return {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}


def _when(value: object) -> str:
    """An ISO time as the pages show it: to the second, in UTC."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(str(value)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = lambda value: quote(str(value), safe="")
    env.filters["when"] = _when
    env.globals["sparkline"] = views.sparkline
    env.globals["flow_steps"] = lambda name: BY_NAME[name].steps
    return env


def create_app(config: WebConfig, source: Source | None = None) -> Starlette:
    """The application; ``source`` defaults to the real services (TemporalSource)."""
    data: Source = (
        source if source is not None else TemporalSource(config.settings, count_ttl=config.count_ttl)
    )
    env = _environment()

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        body = env.get_template(template).render(
            flows=FLOWS,
            states=STATES,
            actions_enabled=config.actions_enabled,
            signed_in=authorized(request, config.token),
            path=request.url.path,
            **context,
        )
        return HTMLResponse(body, status_code=status_code)

    def flow_of(request: Request) -> Flow | None:
        return BY_NAME.get(request.path_params["flow"])

    def not_found(request: Request, what: str, as_json: bool) -> Response:
        if as_json:
            return JSONResponse({"error": f"no {what}"}, status_code=404)
        return page(request, "error.html", status_code=404, message=f"no {what}")

    async def overview(request: Request) -> Response:
        found = await views.overview(data)
        if request.url.path.startswith("/api/"):
            return JSONResponse(found)
        return page(request, "overview.html", overview=found)

    async def flow_page(request: Request) -> Response:
        as_json = request.url.path.startswith("/api/")
        flow = flow_of(request)
        if flow is None:
            return not_found(request, f"flow {request.path_params['flow']!r}", as_json)
        q = request.query_params
        try:
            day = int(q["day"]) if q.get("day") else None
            found = await views.flow_units(
                config,
                data,
                flow,
                state=q.get("state") or ALL,
                day=day,
                instrument=q.get("instrument") or None,
                step=q.get("step") or None,
                error=q.get("error") or None,
                page_token=q.get("page_token") or None,
            )
        except (ValueError, InvalidName) as err:
            if as_json:
                return JSONResponse({"error": str(err)}, status_code=400)
            return page(request, "error.html", status_code=400, message=str(err))
        if as_json:
            return JSONResponse(found)
        counts = await views.flow_counts(data, flow, datetime.now(UTC))
        following = None
        if found["next_page_token"]:
            params = {k: v for k, v in q.items() if k != "page_token"}
            following = "?" + urlencode({**params, "page_token": found["next_page_token"]})
        return page(request, "flow.html", flow=flow, found=found, counts=counts, next_url=following)

    async def unit(request: Request) -> Response:
        as_json = request.url.path.startswith("/api/")
        flow = flow_of(request)
        wid = request.path_params["workflow_id"]
        if flow is None:
            return not_found(request, f"flow {request.path_params['flow']!r}", as_json)
        found = await views.unit_page(config, data, flow, wid)
        if found is None:
            return not_found(request, f"workflow {wid!r}", as_json)
        found["actions"] = [views.action_row(a) for a in await data.recorded(wid, RECENT_ACTIONS)]
        if as_json:
            return JSONResponse(found)
        return page(request, "unit.html", flow=flow, unit=found, done=request.query_params.get("done"))

    async def locations(request: Request) -> Response:
        found = await views.locations_page(data)
        if request.url.path.startswith("/api/"):
            return JSONResponse(found)
        return page(request, "locations.html", found=found)

    async def metrics(request: Request) -> Response:
        found = await views.overview(data)
        return PlainTextResponse(views.metrics_text(found["flows"]), media_type="text/plain; version=0.0.4")

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    def action(kind: str) -> Handler:
        async def act(request: Request) -> Response:
            flow = flow_of(request)
            wid = request.path_params["workflow_id"]
            if not config.actions_enabled:
                return JSONResponse({"error": "actions are not enabled (unembargo web --actions)"}, 403)
            if not authorized(request, config.token):
                actions_log.warning("refused %s of %s by %s: not authenticated", kind, wid, who(request))
                return JSONResponse({"error": "authentication required"}, 401)
            if flow is None:
                return JSONResponse({"error": "no such flow"}, 404)
            form = await _form(request)
            step = form.get("step") or request.query_params.get("step") or ""
            decision = form.get("decision") or request.query_params.get("decision") or ""
            reason = f"unembargo web {kind} by {who(request)}"
            if kind == "retry":
                out = await data.retry(wid, reason)
            elif kind == "reset":
                if not step:
                    return JSONResponse({"error": "reset needs a step"}, 400)
                out = await data.reset(wid, step, reason)
            else:
                if not decision:
                    return JSONResponse({"error": "signal needs a decision"}, 400)
                out = await data.signal(wid, decision)
            done = WebAction(
                who=who(request),
                action=kind,
                flow=flow.name,
                workflow_id=wid,
                step=step or None,
                decision=decision or None,
                outcome=out.action,
                message=out.message,
            )
            actions_log.info(
                "%s %s of %s/%s%s: %s (%s)",
                done.who,
                kind,
                flow.name,
                wid,
                f" step={step}" if step else (f" decision={decision}" if decision else ""),
                out.action,
                out.message,
            )
            await data.record(done)
            entry = views.action_row(done)
            if "text/html" in request.headers.get("accept", ""):
                back = f"/flows/{quote(flow.name)}/units/{quote(wid, safe='')}"
                return RedirectResponse(f"{back}?{urlencode({'done': out.message})}", status_code=303)
            return JSONResponse({**entry, "run_id": out.run_id})

        return act

    async def actions(request: Request) -> Response:
        if not authorized(request, config.token):
            return JSONResponse({"error": "authentication required"}, 401)
        return JSONResponse(
            {"actions": [views.action_row(a) for a in await data.recorded(None, RECENT_ACTIONS)]}
        )

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return page(request, "login.html")
        form = await _form(request)
        given = form.get("token", "")
        token = config.token
        if not config.actions_enabled or token is None or not given:
            return page(request, "login.html", status_code=403, message="actions are not enabled")
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            actions_log.warning("failed sign-in from %s", who(request))
            return page(request, "login.html", status_code=401, message="wrong token")
        actions_log.info("sign-in from %s", who(request))
        done = RedirectResponse("/", status_code=303)
        done.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="strict")
        name = operator_name(form.get("operator"))
        if name:
            done.set_cookie(OPERATOR_COOKIE, name, httponly=True, samesite="strict")
        return done

    async def unanswered(request: Request, exc: Exception) -> Response:
        """Temporal (or the database) did not answer: say so, with a 503, not a traceback; a
        request Temporal refuses (a page token of another query, say) is a 400."""
        refused = isinstance(exc, RPCError) and exc.status == RPCStatusCode.INVALID_ARGUMENT
        reason = unanswered_reason(exc) or (exc.message if isinstance(exc, RPCError) and refused else "")
        reason = reason or type(exc).__name__
        code = 400 if refused else 503
        log.warning("%s %s: %s", request.method, request.url.path, reason)
        if request.url.path.startswith(("/api/", "/metrics")):
            return JSONResponse({"error": reason}, status_code=code)
        shown = reason if refused else f"not available now: {reason}"
        return page(request, "error.html", status_code=code, message=shown)

    unit_path = "/flows/{flow}/units/{workflow_id:path}"
    routes = [
        Route(f"/api{unit_path}/retry", action("retry"), methods=["POST"]),
        Route(f"/api{unit_path}/reset", action("reset"), methods=["POST"]),
        Route(f"/api{unit_path}/signal", action("signal"), methods=["POST"]),
        Route("/", overview),
        Route("/api/overview", overview),
        Route("/flows/{flow}", flow_page),
        Route("/api/flows/{flow}", flow_page),
        Route(unit_path, unit),
        Route(f"/api{unit_path}", unit),
        Route("/locations", locations),
        Route("/api/locations", locations),
        Route("/api/actions", actions),
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/login", login, methods=["GET", "POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            TemporalUnreachable: unanswered,
            RPCError: unanswered,
            SourceUnavailable: unanswered,
        },
    )


async def serve(config: WebConfig, host: str, port: int, source: Source | None = None) -> None:
    """Serve the page until cancelled (``unembargo web``; tests run it as a task)."""
    import uvicorn

    server = uvicorn.Config(
        create_app(config, source), host=host, port=port, log_level="warning", access_log=False
    )
    await uvicorn.Server(server).serve()
