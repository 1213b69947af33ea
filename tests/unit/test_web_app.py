"""The dataflow page (web/) against a small fake of its sources: every page renders what its
JSON says, counts come from COUNT queries only and lists from one page of a listing, values are
escaped, and actions refuse without the token and are logged with it."""

from __future__ import annotations

import doctest
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from unembargo.client.locations import Poller, QueueHealth, QueueRow
from unembargo.engine.errors import TemporalUnreachable
from unembargo.models.settings import Settings
from unembargo.models.web_actions import WebAction
from unembargo.web import flows, views
from unembargo.web.app import create_app
from unembargo.web.config import WebConfig
from unembargo.web.flows import FLOWS, flow
from unembargo.web.source import ActionResult, FailureView, Listed, StepView, TemporalSource, UnitDetail

TOKEN = "web-token-" + "x" * 20
NOW = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)


def run(wid: str, status: str, step: str, **attrs: Any) -> Listed:
    return Listed(wid, f"run-{wid}", "UnembargoExposure", status, {"step": step, **attrs}, NOW, None)


@dataclass
class Fake:
    """Counts by query; one listing; a failed unit's failure; what actions were asked."""

    counts: dict[str, int] = field(default_factory=dict)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: list[Listed] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    pages: list[tuple[str, int, bytes | None]] = field(default_factory=list)
    acted: list[tuple[str, ...]] = field(default_factory=list)
    log: list[WebAction] = field(default_factory=list)

    async def count(self, query: str) -> int:
        self.asked.append(query)
        return self.counts.get(query, 0)

    async def count_by_status(self, query: str) -> dict[str, int]:
        self.asked.append(query)
        return self.groups.get(query, {})

    async def page(self, query: str, size: int, token: bytes | None) -> tuple[list[Listed], bytes | None]:
        self.pages.append((query, size, token))
        # Two pages: the first says where the second starts.
        return self.rows[:size], None if token else b"next\x00page"

    async def last_failure(self, workflow_id: str, run_id: str) -> FailureView | None:
        return FailureView("DestinationConflict", "a zip of <other> content is in the way", "Traceback ...")

    async def unit(self, workflow_id: str) -> UnitDetail | None:
        found = next((r for r in self.rows if r.workflow_id == workflow_id), None)
        if found is None:
            return None
        steps = [StepView("zip", "zip_exposure", False, None, "", 1, "DestinationConflict: in the way")]
        failure = FailureView("DestinationConflict", "in the way", 'File "zip.py", line 1\n  raise <X>')
        return UnitDetail(found, steps, None, failure)

    async def locations(self) -> tuple[list[Any], list[Any]]:
        queue = QueueRow("unembargo-loc-dest", "dest", "slac", "unembargo")
        return [], [QueueHealth(queue, [Poller("1234@host", "activity", NOW)])]

    async def retry(self, workflow_id: str, reason: str) -> ActionResult:
        self.acted.append(("retry", workflow_id, reason))
        return ActionResult("restarted", "run-2", "new run after a failed one")

    async def reset(self, workflow_id: str, step: str, reason: str) -> ActionResult:
        self.acted.append(("reset", workflow_id, step))
        return ActionResult("reset", "run-3", f"reset to before {step}")

    async def signal(self, workflow_id: str, decision: str) -> ActionResult:
        self.acted.append(("signal", workflow_id, decision))
        return ActionResult("signalled", "run-1", f"decision {decision} sent")

    async def record(self, action: WebAction) -> None:
        self.log.insert(0, action)

    async def recorded(self, workflow_id: str | None, limit: int) -> list[WebAction]:
        return [a for a in self.log if workflow_id in (None, a.workflow_id)][:limit]


def app(fake: Fake, actions: bool = True, token: str | None = TOKEN) -> TestClient:
    config = WebConfig(Settings(), actions_enabled=actions, token=SecretStr(token) if token else None)
    return TestClient(create_app(config, fake))


def test_docstrings() -> None:
    for module in (flows, views):
        assert doctest.testmod(module).failed == 0


def test_every_readme_flow_has_types_and_steps() -> None:
    assert [f.name for f in FLOWS] == ["unembargo", "arrivals", "ccat", "rawintegrity", "fits", "carousel"]
    for each in FLOWS:
        assert each.types and each.steps and len(set(each.steps)) == len(each.steps)


def test_state_queries() -> None:
    unembargo = flow("unembargo")
    assert unembargo.query("waiting", step="zip") is None
    assert unembargo.query("running", step="waiting") is None
    assert unembargo.query("running") == (
        'WorkflowType IN ("UnembargoExposure") AND ExecutionStatus = "Running" AND step != "waiting"'
    )
    assert unembargo.query("done", day=20251231, instrument="LSSTCam") == (
        'WorkflowType IN ("UnembargoExposure") AND day_obs = 20251231 AND instrument = "LSSTCam" '
        'AND ExecutionStatus = "Completed"'
    )
    assert flow("fits").query("waiting") is None
    carousel = flow("carousel")
    assert carousel.query("running", step="locks") == (
        'WorkflowType IN ("CarouselRequest") AND step = "locks" AND ExecutionStatus = "Running" '
        'AND carousel_status != "WaitingOperator"'
    )
    asking = Listed(
        "carousel-s-d", "r", "CarouselRequest", "running", {"carousel_status": "WaitingOperator"}, NOW, None
    )
    assert views.unit_state(carousel, asking) == "waiting"
    assert views.unit_row(WebConfig(), carousel, asking)["waiting_for"] == "for an operator"
    with pytest.raises(ValueError):
        unembargo.query("asleep")
    # A filter value is a name, never a piece of query.
    with pytest.raises(ValueError):
        unembargo.query("all", instrument='x" OR WorkflowType != "')


def test_overview_counts_from_count_queries_and_renders_each_flow() -> None:
    fake = Fake()
    unembargo = flow("unembargo")
    fake.groups[unembargo.base_query()] = {"Failed": 2, "Running": 4, "Completed": 1}
    fake.groups[unembargo.query("all", step="zip") or ""] = {"Failed": 1, "Terminated": 1}
    fake.groups[unembargo.query("all", step="waiting") or ""] = {"Running": 3}
    fake.groups[unembargo.query("all", step="done") or ""] = {"Completed": 1}
    fake.counts = {q: 1 for q in _done_today_queries(unembargo)}
    with app(fake) as http:
        shown = http.get("/api/overview").json()
        asked = list(fake.asked)
        page = http.get("/").text
        metrics = http.get("/metrics").text
    steps = {s["step"]: s for s in shown["flows"][0]["steps"]}
    assert steps["zip"]["counts"]["failed"] == 2
    assert steps["waiting"]["counts"]["waiting"] == 3 and steps["waiting"]["waiting_for"] == "for raws"
    assert steps["done"]["counts"]["done_today"] == 1
    # One running unit is at no step the flow declares: counted on a row of its own.
    assert steps["(other)"]["counts"] == {"running": 1, "waiting": 0, "failed": 0, "done_today": 0}
    assert sum(b["completed"] for b in shown["flows"][0]["throughput"]) == 1
    assert all(q.startswith("WorkflowType IN (") for q in asked) and not fake.pages
    # An empty flow costs one count; a busy one a count per step and a few more, whatever its size.
    assert sum(q.startswith(flow("fits").base_query()) for q in asked) == 1
    assert sum(q.startswith(unembargo.base_query()) for q in asked) == 1 + 2 + len(unembargo.steps) + 1 + 24
    for each in FLOWS:
        assert f'<section class="flow" data-flow="{each.name}">' in page
    assert '<td class="count" data-state="done_today">' in page and "<svg" in page
    assert 'unembargo_units{flow="unembargo",step="zip",state="failed"} 2' in metrics


def _done_today_queries(unembargo: flows.Flow) -> list[str]:
    """The queries that find one completion today, in the last 24 h, at step done and in this hour."""
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    since = flows.done_since_clause(views.midnight(now))
    return [
        f"{unembargo.base_query()} AND {since}",
        f"{unembargo.base_query()} AND {flows.done_since_clause(hour - timedelta(hours=23))}",
        f"{unembargo.query('all', step='done')} AND {since}",
        f"{unembargo.base_query()} AND {flows.closed_between_clause(hour, hour + timedelta(hours=1))}",
    ]


def test_flow_page_lists_one_page_with_failures_and_temporal_links() -> None:
    fake = Fake(
        rows=[run("unembargo-LSSTCam-A", "failed", "zip"), run("unembargo-LSSTCam-B", "running", "waiting")]
    )
    with app(fake) as http:
        shown = http.get("/api/flows/unembargo", params={"state": "all"}).json()
        page = http.get("/flows/unembargo", params={"state": "all"}).text
        following = http.get("/api/flows/unembargo", params={"page_token": shown["next_page_token"]}).json()
        # A token of another list (the filters changed) or no token at all is refused, not passed on.
        for token in (shown["next_page_token"], "Zm9vYmFy"):
            other = http.get("/api/flows/unembargo", params={"state": "failed", "page_token": token})
            assert other.status_code == 400
    assert [u["state"] for u in shown["units"]] == ["failed", "waiting"]
    assert shown["units"][1]["waiting_for"] == "for raws"
    assert fake.pages[0][1] == 50 and fake.pages[-1][2] == b"next\x00page"
    assert following["units"]
    assert '<tr class="unit" data-workflow-id="unembargo-LSSTCam-A"' in page
    assert '<span class="error-type">DestinationConflict</span>' in page
    # Escaped: the message's angle brackets are text, not markup.
    assert "a zip of &lt;other&gt; content" in page
    link = 'class="temporal-link" href="http://127.0.0.1:8233/namespaces/default/workflows/'
    assert f'{link}unembargo-LSSTCam-A/run-unembargo-LSSTCam-A/history"' in page


def test_error_filter_keeps_matching_units_and_bad_filters_are_400() -> None:
    fake = Fake(rows=[run("unembargo-LSSTCam-A", "failed", "zip")])
    with app(fake) as http:
        none = http.get("/api/flows/unembargo", params={"state": "failed", "error": "Other"}).json()
        some = http.get(
            "/api/flows/unembargo", params={"state": "failed", "error": "DestinationConflict"}
        ).json()
        assert http.get("/api/flows/unembargo", params={"day": "20261131"}).status_code == 400
        assert http.get("/flows/unembargo", params={"state": "nope"}).status_code == 400
        assert http.get("/api/flows/nope").status_code == 404
    # Visibility does not index error types: the filter reads pages until one is full or none is left.
    assert not none["units"] and len(some["units"]) == 2 and some["next_page_token"] is None


def test_unit_page_shows_failure_with_stack_trace_escaped() -> None:
    fake = Fake(rows=[run("unembargo-LSSTCam-A", "failed", "zip")])
    with app(fake) as http:
        page = http.get("/flows/unembargo/units/unembargo-LSSTCam-A").text
        shown = http.get("/api/flows/unembargo/units/unembargo-LSSTCam-A").json()
        assert http.get("/flows/unembargo/units/missing").status_code == 404
    assert shown["failure"]["type"] == "DestinationConflict" and shown["steps"][0]["attempts"] == 1
    assert '<pre class="stack-trace">File &#34;zip.py&#34;, line 1\n  raise &lt;X&gt;</pre>' in page
    assert '<span class="error-message">in the way</span>' in page
    assert '<form class="action" method="post"' in page


def test_locations_show_pollers() -> None:
    with app(Fake()) as http:
        page = http.get("/locations").text
        shown = http.get("/api/locations").json()
    assert shown["queues"][0]["healthy"] and shown["queues"][0]["pollers"][0]["identity"] == "1234@host"
    assert "1234@host" in page


def test_actions_refuse_without_the_token_and_do_nothing() -> None:
    fake = Fake(rows=[run("unembargo-LSSTCam-A", "failed", "zip")])
    url = "/api/flows/unembargo/units/unembargo-LSSTCam-A/retry"
    with app(fake) as http:
        assert http.post(url).status_code == 401
        assert http.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.post(url, cookies={"unembargo_web": TOKEN}).status_code == 401
        assert http.post("/login", data={"token": "wrong"}).status_code == 401
    with app(fake, actions=False) as http:
        assert http.post(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 403
        assert 'class="action"' not in http.get("/flows/unembargo/units/unembargo-LSSTCam-A").text
    with app(fake, token=None) as http:
        assert http.post(url, headers={"Authorization": "Bearer "}).status_code == 401
    assert fake.acted == []


def test_actions_with_the_token_are_done_and_logged_without_it(caplog: pytest.LogCaptureFixture) -> None:
    fake = Fake(rows=[run("unembargo-LSSTCam-A", "failed", "zip")])
    base = "/api/flows/unembargo/units/unembargo-LSSTCam-A"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with caplog.at_level(logging.INFO, logger="unembargo.web.actions"), app(fake) as http:
        assert http.post(f"{base}/retry", headers=bearer).json()["outcome"] == "restarted"
        assert http.post(f"{base}/reset", headers=bearer, data={"step": "zip"}).json()["outcome"] == "reset"
        assert http.post(f"{base}/reset", headers=bearer).status_code == 400
        # The sign-in form sets a cookie that acts too; a form post is sent back to the unit page.
        signed = http.post("/login", data={"token": TOKEN, "operator": "night-shift"}, follow_redirects=False)
        assert signed.status_code == 303 and TOKEN not in signed.headers["set-cookie"]
        done = http.post(f"{base}/signal", data={"decision": "retry"}, headers={"Accept": "text/html"})
        assert done.status_code == 200 and "decision retry sent" in done.text
        logged = http.get("/api/actions", headers=bearer).json()["actions"]
        unit = http.get(base).json()
        page = http.get("/flows/unembargo/units/unembargo-LSSTCam-A").text
    assert [a[0] for a in fake.acted] == ["retry", "reset", "signal"]
    assert [a["outcome"] for a in unit["actions"]] == ["signalled", "reset", "restarted"]
    assert '<tr class="action-done">' in page and "decision retry sent" in page
    assert [a["action"] for a in logged] == ["signal", "reset", "retry"]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "retry of unembargo/unembargo-LSSTCam-A: restarted" in text and TOKEN not in text
    assert logged[0]["who"].startswith("night-shift (") and not logged[1]["who"].startswith("night")


def test_temporal_down_is_a_503_saying_so() -> None:
    class Down(Fake):
        async def count_by_status(self, query: str) -> dict[str, int]:
            raise TemporalUnreachable("cannot reach Temporal at 127.0.0.1:7233: Connection refused")

    with app(Down()) as http:
        page, shown = http.get("/"), http.get("/api/overview")
    assert page.status_code == shown.status_code == 503
    assert "Connection refused" in page.text and "Connection refused" in shown.json()["error"]


def test_no_page_shows_the_token() -> None:
    fake = Fake(rows=[run("unembargo-LSSTCam-A", "failed", "zip")])
    with app(fake) as http:
        http.post("/login", data={"token": TOKEN})
        for path in (
            "/",
            "/flows/unembargo",
            "/flows/unembargo/units/unembargo-LSSTCam-A",
            "/locations",
            "/login",
        ):
            assert TOKEN not in http.get(path).text, path
    assert TOKEN not in repr(WebConfig(token=SecretStr(TOKEN)))


async def test_counts_are_reused_for_count_ttl_seconds_only() -> None:
    asked: list[str] = []

    async def ask(query: str) -> int:
        asked.append(query)
        return len(asked)

    reused, fresh = TemporalSource(Settings(), count_ttl=60), TemporalSource(Settings(), count_ttl=0)
    assert [await reused._cached("q", ask) for _ in range(3)] == [1, 1, 1]
    assert [await fresh._cached("q", ask) for _ in range(2)] == [2, 3]
