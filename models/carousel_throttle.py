"""Throttling a tape (source RSE) for the carousel: at most N files staging at once, a capped queue.

One long-lived workflow per tape (``carousel-throttle-<rse>``) holds every request's ask. A
request says, in totals (so a repeated or reordered signal changes nothing): how many files it
has asked to stage from this tape (``wanted``) and how many of those granted are done
(``done``: available or given up). The throttle answers with the total it has granted. Files
staging on the tape are the sum of granted less done; grants never take it above ``staging``.

The queue holds at most ``queued`` files waiting for a grant: asks are admitted whole, in
arrival order, while they fit (an ask larger than the cap is admitted into an empty queue), and
the rest wait outside. Among admitted asks, free slots go to the highest effective priority, then
the earliest arrival; the effective priority is the request's priority plus one for every
``aging_s`` it has waited since its last grant (or its arrival), so a busy high-priority request
cannot starve a lower one for ever.

    >>> lim = ThrottleLimits(staging=3, queued=10, aging_s=100.0)
    >>> low = Asker("low", 0, wanted=4, done=0, order=0, since=0.0)
    >>> high = Asker("high", 5, wanted=4, done=0, order=1, since=0.0)
    >>> grant([low, high], lim, now=0.0)
    {'high': 3}
    >>> high.done = 3; grant([low, high], lim, now=10.0)
    {'high': 4, 'low': 2}
    >>> high.done, high.wanted, high.since = 4, 9, 600.0  # more files; last served at t=600
    >>> grant([low, high], lim, now=750.0)  # low waited since t=10: 0 + 7 beats 5 + 1
    {'low': 3}
"""

from __future__ import annotations

from dataclasses import dataclass, field

THROTTLE_WORKFLOW = "CarouselThrottle"
# Signals: limits (the start, and each later stage refreshing them); a request's ask; the answer.
LIMITS_SIGNAL = "limits"
ASK_SIGNAL = "ask"
GRANT_SIGNAL = "grant"


def throttle_workflow_id(rse: str) -> str:
    """One throttle per tape."""
    return f"carousel-throttle-{rse}"


@dataclass(frozen=True)
class ThrottleLimits:
    """A tape's limits; the defaults apply to each field an RSE's setting leaves out."""

    # Files of all requests staging from the tape at once (granted, not yet available).
    staging: int = 1000
    # Files the tape's queue holds waiting for a grant.
    queued: int = 10000
    # A waiting request's priority grows by one each this long.
    aging_s: float = 3600.0


@dataclass(frozen=True)
class ThrottleAsk:
    request_id: str
    priority: int
    # Totals for this tape: files the request asked for; of those granted, files done.
    wanted: int
    done: int


@dataclass(frozen=True)
class ThrottleGrant:
    # Files granted to the request in all (it rules the next ones of its queue).
    granted: int


@dataclass
class Asker:
    """One request's place at the throttle."""

    request_id: str
    priority: int
    wanted: int
    done: int
    order: int  # arrival sequence
    since: float  # epoch seconds of its arrival or its last grant
    granted: int = 0
    admitted: bool = False


@dataclass
class ThrottleState:
    rse: str
    limits: ThrottleLimits
    askers: list[Asker] = field(default_factory=list)
    arrivals: int = 0
    # Grants sent, and the most files ever staging at once (the limit must hold it).
    grants: int = 0
    peak_staging: int = 0
    rounds: int = 0


@dataclass(frozen=True)
class ThrottleInput:
    rse: str
    limits: ThrottleLimits
    # Continue as new after this many rounds of answers (or when Temporal suggests it).
    rounds: int = 500
    carry: ThrottleState | None = None


@dataclass(frozen=True)
class ThrottleLoad:
    """One tape's throttle at a glance (``unembargo carousel throttle-status``)."""

    rse: str
    # False: no throttle workflow runs for the tape (no request has staged from it yet).
    running: bool
    staging_limit: int
    queued_limit: int
    # Files granted and not done; files of admitted requests waiting for a grant; files of
    # requests still waiting to enter the queue.
    staging: int = 0
    queued: int = 0
    outside: int = 0
    requests: int = 0
    peak_staging: int = 0


def load_of(state: ThrottleState) -> ThrottleLoad:
    """The counts a throttle's state adds up to."""
    askers = state.askers
    return ThrottleLoad(
        state.rse,
        True,
        state.limits.staging,
        state.limits.queued,
        staging(askers),
        sum(a.wanted - a.granted for a in askers if a.admitted),
        sum(a.wanted - a.granted for a in askers if not a.admitted),
        len(askers),
        state.peak_staging,
    )


def staging(askers: list[Asker]) -> int:
    return sum(a.granted - a.done for a in askers)


def _admit(askers: list[Asker], cap: int) -> None:
    queued = sum(a.wanted - a.granted for a in askers if a.admitted)
    for a in sorted((a for a in askers if not a.admitted), key=lambda a: a.order):
        need = a.wanted - a.granted
        if queued > 0 and queued + need > cap:
            return
        a.admitted, queued = True, queued + need


def grant(askers: list[Asker], limits: ThrottleLimits, now: float) -> dict[str, int]:
    """Fill the free slots (see the module's rule); request id -> its new granted total."""
    changed: dict[str, int] = {}
    _admit(askers, limits.queued)
    free = limits.staging - staging(askers)
    while free > 0:
        ready = [a for a in askers if a.admitted and a.wanted > a.granted]
        if not ready:
            break
        best = min(ready, key=lambda a: (-(a.priority + int((now - a.since) // limits.aging_s)), a.order))
        take = min(free, best.wanted - best.granted)
        best.granted += take
        best.since = now
        free -= take
        changed[best.request_id] = best.granted
        _admit(askers, limits.queued)
    return changed
