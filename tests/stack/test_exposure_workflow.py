"""End to end on the real stack: `start` unembargoes every eligible exposure, once."""

from __future__ import annotations

from datetime import timedelta

from support import WorkerProcess, effects, fresh_day, seed_small
from unembargo.client.run import StartRequest, run_start
from unembargo.models.settings import Settings
from verify import check_unembargoed

# Test days lie in 2000-2019; look back far enough for all of them.
EVERYTHING = timedelta(days=365 * 30)


async def test_start_unembargoes_every_eligible_exposure_once(
    settings: Settings, worker: WorkerProcess
) -> None:
    """`unembargo start`'s use-case selects a day's due exposures, starts one run each, waits for
    all, and a second start finds them completed and does nothing again."""
    day = fresh_day()
    seeded = [seed_small(settings, day, seq) for seq in range(1, 6)]
    request = StartRequest(window=timedelta(hours=80), lookback=EVERYTHING, day_obs=day)

    result = await run_start(settings, request)

    assert [o.outcome for o in result.outcomes] == ["started"] * 5, worker.output()[-3000:]
    assert result.ok, [p for p in result.finished if p.status != "completed"]
    for exp in seeded:
        check_unembargoed(settings, day, exp.obs_id, exp.exposure_id, list(exp.tracts))
    ledger = effects(settings, {e.obs_id for e in seeded})
    assert ledger and all(n == 1 for n in ledger.values()), ledger

    again = await run_start(settings, request)
    assert {o.outcome for o in again.outcomes} == {"completed"}
    assert effects(settings, {e.obs_id for e in seeded}) == ledger
