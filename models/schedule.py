"""What a scheduled run of ``unembargo schedule`` passes its workflow and activity.

Counts only: a run may select thousands of exposures, and its history is visible in the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unembargo.models.exposure import Step

# The selection reads the embargo butler, as zip does: it runs on the queue that zips.
SELECT_STEP = Step.ZIP


@dataclass(frozen=True)
class SelectInput:
    """The selection of ``unembargo start``, as a schedule runs it."""

    # Task queue of the selection activity: the location that zips (it reads the embargo butler).
    queue: str
    instrument: str = "LSSTCam"
    # None: each exposure's embargo rule decides; else this period (seconds) for all.
    window_s: float | None = None
    lookback_s: float = 30 * 86400.0


@dataclass(frozen=True)
class SelectResult:
    """How many exposures were due, how many were started, and the state of the others."""

    selected: int
    started: int
    # Exposures whose workflow existed already, by its status ("running": 3, "completed": 12).
    existing: dict[str, int] = field(default_factory=dict)
