"""What each page shows, as plain JSON values: the HTML pages render these, ``/api/...``
returns them as they are, and ``/metrics`` formats the overview's counts.

    >>> print(metrics_text([{"flow": "unembargo", "steps": [{"step": "zip", "counts": {"running": 3}}]}]))
    # HELP unembargo_units Units of each flow by step and state.
    # TYPE unembargo_units gauge
    unembargo_units{flow="unembargo",step="zip",state="running"} 3
    <BLANKLINE>
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Awaitable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, TypeVar

from unembargo.models.names import SA_DAY_OBS, SA_INSTRUMENT, SA_STEP
from unembargo.models.web_actions import WebAction
from unembargo.web.config import WebConfig
from unembargo.web.flows import (
    ALL,
    DONE,
    FAILED,
    FLOWS,
    RUNNING,
    STATES,
    UNSUCCESSFUL,
    WAITING,
    Flow,
    closed_between_clause,
    done_since_clause,
)
from unembargo.web.source import Listed, Source, decisions

T = TypeVar("T")
CONTINUED = "continued"
# The overview's row of units at a step the flow does not declare.
OTHER_STEP = "(other)"
# The overview's count columns, in order ("done today" is the day's completions).
DONE_TODAY = "done_today"
COUNT_STATES = (RUNNING, WAITING, FAILED, DONE_TODAY)
# Count queries in flight at once.
_CONCURRENCY = 32
# Hours of the throughput sparkline.
SPARK_HOURS = 24
# Pages scanned for an error-type filter before a page is returned short (with its token).
ERROR_SCAN_PAGES = 10
# Bytes of a page token that say which query it belongs to.
_MARK = 8


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _json(asdict(value))
    return value


async def _gather(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``calls``, at most _CONCURRENCY at once, in order."""
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


def midnight(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def flow_counts(source: Source, flow: Flow, now: datetime) -> dict[str, Any]:
    """Per step, how many units run, wait (and why), failed, and completed today; the last
    24 hours' completions per hour. COUNT queries only, grouped by status, and none for what an
    earlier count says is empty: a flow's cost grows with its steps, not its units."""
    base = flow.base_query()
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    bars = [hour - timedelta(hours=SPARK_HOURS - i) for i in range(SPARK_HOURS + 1)]
    zero = {state: 0 for state in COUNT_STATES}
    steps: list[dict[str, Any]] = [
        {"step": step, "waiting_for": _why(flow, step), "counts": dict(zero)} for step in flow.steps
    ]
    throughput = [{"hour": a.isoformat(), "completed": 0} for a in bars[:-1]]
    whole = await source.count_by_status(base)
    if sum(whole.values()):
        today, day = await _gather(
            [
                source.count(f"{base} AND {done_since_clause(midnight(now))}"),
                source.count(f"{base} AND {done_since_clause(bars[0])}"),
            ]
        )
        grouped = await _gather([source.count_by_status(flow.query(ALL, step=s) or "") for s in flow.steps])
        asks: list[tuple[dict[str, int], str, str]] = []
        for row, groups in zip(steps, grouped, strict=True):
            counts, step = row["counts"], row["step"]
            running = groups.get("Running", 0)
            counts[FAILED] = sum(groups.get(s, 0) for s in UNSUCCESSFUL)
            if step in flow.waiting_steps:
                counts[WAITING] = running
            else:
                counts[RUNNING] = running
                if running and flow.waiting_clause is not None:
                    asks.append((counts, WAITING, flow.query(WAITING, step=step) or ""))
            if today and groups.get("Completed", 0):
                asks.append(
                    (
                        counts,
                        DONE_TODAY,
                        f"{flow.query(ALL, step=step)} AND {done_since_clause(midnight(now))}",
                    )
                )
        bar_queries = [f"{base} AND {closed_between_clause(a, b)}" for a, b in pairwise(bars)] if day else []
        found = await _gather([source.count(q) for _, _, q in asks] + [source.count(q) for q in bar_queries])
        for (counts, state, _), n in zip(asks, found[: len(asks)], strict=True):
            counts[state] = n
            if state == WAITING:
                counts[RUNNING] -= n
        for bar, n in zip(throughput if day else [], found[len(asks) :], strict=True):
            bar["completed"] = n
        # Units whose step is none of the flow's (not set yet, or a value this page does not know).
        other = {
            RUNNING: whole.get("Running", 0)
            - sum(r["counts"][RUNNING] + r["counts"][WAITING] for r in steps),
            WAITING: 0,
            FAILED: sum(whole.get(s, 0) for s in UNSUCCESSFUL) - sum(r["counts"][FAILED] for r in steps),
            DONE_TODAY: today - sum(r["counts"][DONE_TODAY] for r in steps),
        }
        # Counts are approximate and each query sees its own moment: never below zero.
        other = {state: max(n, 0) for state, n in other.items()}
        if any(other.values()):
            steps.append({"step": OTHER_STEP, "waiting_for": None, "counts": other})
    totals = {state: sum(s["counts"][state] for s in steps) for state in COUNT_STATES}
    return {
        "flow": flow.name,
        "unit": flow.unit,
        "totals": totals,
        "steps": steps,
        "throughput": throughput,
    }


def _why(flow: Flow, step: str) -> str | None:
    if step in flow.waiting_steps:
        return flow.waiting_steps[step]
    return flow.waiting_clause.reason if flow.waiting_clause is not None else None


async def overview(source: Source, now: datetime | None = None) -> dict[str, Any]:
    """Every flow's counts."""
    now = now or datetime.now(UTC)
    flows = await asyncio.gather(*(flow_counts(source, f, now) for f in FLOWS))
    return {"generated": now.isoformat(), "flows": list(flows)}


def _query_mark(query: str) -> bytes:
    return hashlib.sha256(query.encode()).digest()[:_MARK]


def encode_token(query: str, token: bytes | None) -> str | None:
    """Temporal's next-page token, marked with the query it continues (a page token is valid
    only for the listing that made it)."""
    return base64.urlsafe_b64encode(_query_mark(query) + token).decode() if token else None


def decode_token(query: str, text: str | None) -> bytes | None:
    """The token of ``encode_token``; one that is malformed or of another query is ValueError
    (given to Temporal, it is retried for seconds before it fails)."""
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text.encode())
    except (binascii.Error, ValueError) as err:
        raise ValueError("page_token is not a page token") from err
    if len(raw) <= _MARK or raw[:_MARK] != _query_mark(query):
        raise ValueError("page_token is not a page of this list (its filters changed): start again")
    return raw[_MARK:]


def unit_state(flow: Flow, row: Listed) -> str:
    """running | waiting | failed | done, as the page's filters name them (or continued: a run
    that continued as new, its unit going on in the next)."""
    if row.status == "completed":
        return DONE
    if row.status == "continued_as_new":
        return CONTINUED
    if row.status != "running":
        return FAILED
    step = str(row.attributes.get(SA_STEP.name) or "")
    if step in flow.waiting_steps:
        return WAITING
    if flow.waiting_clause is not None and flow.waiting_clause.holds(row.attributes):
        return WAITING
    return RUNNING


def unit_row(config: WebConfig, flow: Flow, row: Listed) -> dict[str, Any]:
    """One unit as a list shows it."""
    state = unit_state(flow, row)
    step = str(row.attributes.get(SA_STEP.name) or "-")
    return {
        "workflow_id": row.workflow_id,
        "run_id": row.run_id,
        "workflow_type": row.workflow_type,
        "status": row.status,
        "state": state,
        "step": step,
        "waiting_for": _why(flow, step) if state == WAITING else None,
        "instrument": row.attributes.get(SA_INSTRUMENT.name),
        "day_obs": row.attributes.get(SA_DAY_OBS.name),
        "started": _json(row.started),
        "closed": _json(row.closed),
        "temporal_url": config.workflow_url(row.workflow_id, row.run_id),
        "error_type": None,
        "error_message": None,
    }


async def flow_units(
    config: WebConfig,
    source: Source,
    flow: Flow,
    state: str = ALL,
    day: int | None = None,
    instrument: str | None = None,
    step: str | None = None,
    error: str | None = None,
    page_token: str | None = None,
) -> dict[str, Any]:
    """One page of a flow's units in ``state``: one listing call (a few more with an error
    filter, which visibility cannot index), and each failed unit's failure."""
    if state not in STATES:
        raise ValueError(f"state {state!r}: use one of {', '.join(STATES)}")
    query = flow.query(state, step=step, day=day, instrument=instrument)
    filters = {"state": state, "day": day, "instrument": instrument, "step": step, "error": error}
    result: dict[str, Any] = {
        "flow": flow.name,
        "unit": flow.unit,
        "filters": filters,
        "query": query,
        "steps": list(flow.steps),
        "units": [],
        "next_page_token": None,
    }
    if query is None:
        return result
    token = decode_token(query, page_token)
    rows: list[dict[str, Any]] = []
    for _ in range(ERROR_SCAN_PAGES if error else 1):
        listed, token = await source.page(query, config.page_size, token)
        found = [unit_row(config, flow, r) for r in listed]
        await _with_failures(source, found)
        rows += [r for r in found if not error or r["error_type"] == error]
        if not token or len(rows) >= config.page_size:
            break
    result["units"] = rows
    result["next_page_token"] = encode_token(query, token)
    return result


async def _with_failures(source: Source, rows: list[dict[str, Any]]) -> None:
    failed = [r for r in rows if r["state"] == FAILED]
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(row: dict[str, Any]) -> None:
        async with gate:
            seen = await source.last_failure(row["workflow_id"], row["run_id"])
        if seen is not None:
            row["error_type"], row["error_message"] = seen.type, seen.message

    await asyncio.gather(*(one(r) for r in failed))


async def unit_page(config: WebConfig, source: Source, flow: Flow, workflow_id: str) -> dict[str, Any] | None:
    """One unit: its timeline, pending step, failure with stack trace, files and copies."""
    detail = await source.unit(workflow_id)
    if detail is None:
        return None
    row = unit_row(config, flow, detail.listed)
    if detail.failure is not None and row["state"] == FAILED:
        row["error_type"], row["error_message"] = detail.failure.type, detail.failure.message
    return {
        **row,
        "flow": flow.name,
        "attributes": _json(detail.listed.attributes),
        "waiting_for": detail.waiting_for or row["waiting_for"],
        "steps": _json(detail.steps),
        "pending": _json(detail.pending),
        "failure": _json(detail.failure),
        "copies": _json(detail.copies),
        "state_fields": _json(detail.state),
        "decisions": list(decisions(detail.listed.workflow_type)),
    }


def action_row(action: WebAction) -> dict[str, Any]:
    """An action as the page and /api/actions show it."""
    return {
        "when": _json(action.at),
        "who": action.who,
        "action": action.action,
        "flow": action.flow,
        "workflow_id": action.workflow_id,
        "step": action.step,
        "decision": action.decision,
        "outcome": action.outcome,
        "message": action.message,
    }


async def locations_page(source: Source) -> dict[str, Any]:
    """Each location, and each task queue's pollers and health."""
    rows, health = await source.locations()
    queues = [
        {
            **_json(h.queue),
            "pollers": _json(h.pollers),
            "healthy": bool(h.pollers),
        }
        for h in health
    ]
    return {"locations": _json(rows), "queues": queues}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(flows: list[dict[str, Any]]) -> str:
    """The overview's counts in Prometheus' text format: one gauge per flow, step and state."""
    lines = [
        "# HELP unembargo_units Units of each flow by step and state.",
        "# TYPE unembargo_units gauge",
    ]
    for flow in flows:
        for step in flow["steps"]:
            for state, count in step["counts"].items():
                labels = (
                    f'flow="{_label(flow["flow"])}",step="{_label(step["step"])}",state="{_label(state)}"'
                )
                lines.append(f"unembargo_units{{{labels}}} {count}")
    return "\n".join(lines) + "\n"


def sparkline(throughput: list[dict[str, Any]], width: int = 120, height: int = 24) -> str:
    """An inline SVG polyline of completions per hour (numbers only: safe to embed)."""
    values = [int(b["completed"]) for b in throughput] or [0]
    top = max(values) or 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg class="sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="completions per hour, last 24 h (max {top})">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{points}"/></svg>'
    )
