"""The dataflow page's record of what operators did through it: one row per action (retry,
reset, an operator's decision), who asked, to which unit, and what came of it. Never the token.
The table is made by the ``web`` branch of the migrations (versions/web_0001_actions.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class WebAction(SQLModel, table=True):
    __tablename__ = "web_action"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=_now)
    # The name given at sign-in (or X-Operator) and the client's address.
    who: str
    action: str  # retry | reset | signal
    flow: str
    workflow_id: str = Field(index=True)
    step: str | None = None
    decision: str | None = None
    outcome: str  # restarted | reset | signalled | none
    message: str = ""
