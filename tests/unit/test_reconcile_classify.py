"""reconcile's classes for what needs action beyond the steps, and its arrival states, on hand-built
inventories (no services)."""

from __future__ import annotations

from datetime import UTC, datetime

from unembargo.adapters.destination import parse_staging
from unembargo.cli.reconcile import STEPS_HEADER, verdict_table
from unembargo.client.reconcile import Reconciliation, classify, judge, staging_files
from unembargo.models import names
from unembargo.models.exposure import STEPS, Step
from unembargo.models.reconcile import (
    ARRIVAL_ARRIVING,
    ARRIVAL_EMBARGOED,
    ARRIVAL_INCOMPLETE,
    ARRIVAL_STARTED,
    NOT_ARRIVED,
    ArrivalRun,
    EmbargoExposure,
    Inventory,
    MainHolding,
    ObsDataset,
    RucioDay,
    RucioFile,
    WorkflowRun,
)

DAY = 20251231
INST = "LSSTCam"


def obs(seq: int) -> str:
    return f"MC_O_{DAY}_{seq:06d}"


def unembargoed(*seqs: int) -> Inventory:
    """A day whose exposures are all fully unembargoed, by name."""
    inv = Inventory(INST, DAY, bucket_url=f"s3://embargo/{INST}/{DAY}/")
    files: dict[str, RucioFile] = {}
    for seq in seqs:
        obs_id = obs(seq)
        inv.folders = inv.folders | {obs_id}
        inv.exposures[obs_id] = EmbargoExposure(seq, due=True, end=datetime(2026, 1, 1, tzinfo=UTC))
        datasets = frozenset(names.exposure_datasets(INST, DAY, obs_id, ()))
        for name in (names.zip_relpath(INST, DAY, obs_id), names.yaml_relpath(INST, DAY, obs_id)):
            inv.destination[name] = 100
            files[name] = RucioFile(100, "0000abcd", "0" * 32, available=True, parents=datasets)
        inv.main[obs_id] = MainHolding(complete=True)
        inv.rucio = RucioDay(
            files={**inv.rucio.files, **files},
            obs={**inv.rucio.obs, obs_id: ObsDataset(False, names.BACKUP_VALUE)},
        )
        inv.workflows[obs_id] = WorkflowRun(names.workflow_id(INST, obs_id), "completed", "done")
    return inv


def reconciliation(inv: Inventory) -> Reconciliation:
    return Reconciliation(INST, DAY, classify(inv), {}, staging_files(inv))


def test_a_bucket_folder_without_butler_record_needs_action() -> None:
    inv = unembargoed(1)
    inv.folders = inv.folders | {obs(2)}
    verdict = judge(inv, obs(2))
    assert verdict.klass == "no-butler-record"
    assert (
        "no exposure record in the embargo butler" in verdict.reason and "Ingest its raws" in verdict.reason
    )
    # Not something --repair could start (no exposure id), but the exit code says so.
    assert not verdict.repairable
    assert not reconciliation(inv).ok


def test_a_zip_that_differs_from_the_bucket_is_corrupt_not_done() -> None:
    inv = unembargoed(1, 2)
    assert reconciliation(inv).ok
    # What --verify found: the zip's name is right, its content is not.
    inv.deep[obs(1)] = {Step.ZIP: "the zip does not match s3://...: 1 difference: a.fits md5 differs"}
    verdict = judge(inv, obs(1))
    assert verdict.klass == "corrupt"
    assert Step.ZIP not in verdict.done and "zip: the zip does not match" in verdict.reason
    assert "a.fits md5 differs" in verdict.reason
    assert not verdict.repairable
    rec = reconciliation(inv)
    assert not rec.ok and rec.counts["corrupt"] == 1 and rec.counts["unembargoed"] == 1


def test_staging_files_are_their_own_section_and_stale_ones_need_action() -> None:
    inv = unembargoed(1, 2)
    day = names.day_relpath(INST, DAY)
    inv.staging = {
        f"{day}/.{obs(1)}.zip.0123456789ab.partial": 10,
        f"{day}/{obs(2)}.zip.transfer-tmp": 20,
    }
    found = {f.name.rpartition("/")[2]: f for f in staging_files(inv)}
    assert {(f.obs_id, f.made_by, f.in_use) for f in found.values()} == {
        (obs(1), "ours", False),
        (obs(2), "cron", False),
    }
    rec = reconciliation(inv)
    assert not rec.ok and len(rec.stale) == 2
    # The exposures themselves are still judged on their files.
    assert rec.counts["unembargoed"] == 2


def test_our_staging_file_of_a_running_workflow_may_be_in_use() -> None:
    inv = unembargoed(1)
    inv.workflows[obs(1)] = WorkflowRun(names.workflow_id(INST, obs(1)), "running", "zip")
    inv.staging = {f"{names.day_relpath(INST, DAY)}/.{obs(1)}.zip.0123456789ab.partial": 10}
    [staged] = staging_files(inv)
    assert staged.in_use
    assert not reconciliation(inv).stale


def test_staging_names() -> None:
    assert parse_staging(f".{obs(1)}_dimensions.yaml.00000000abcd.partial") == (
        f"{obs(1)}_dimensions.yaml",
        "ours",
    )
    assert parse_staging(f"{obs(1)}.zip.transfer-tmp") == (f"{obs(1)}.zip", "cron")
    assert parse_staging(f"{obs(1)}.zip") is None
    assert parse_staging(".hidden") is None


def test_the_step_column_names_its_steps() -> None:
    assert "zeirt" not in STEPS_HEADER
    assert all(str(step) in STEPS_HEADER for step in STEPS)
    table = verdict_table(reconciliation(unembargoed(1)))
    assert [c.header for c in table.columns][2] == STEPS_HEADER


# ---------------------------------------------------------------- arrival states


def arrival_run(obs_id: str, state: str, **kw: object) -> ArrivalRun:
    return ArrivalRun(f"arrival-{INST}-{obs_id}", state, **kw)  # type: ignore[arg-type]


def test_an_arriving_exposure_is_arriving_not_no_butler_record_nor_missing() -> None:
    inv = unembargoed(1)
    # Its first raws are not ingested yet: a folder and no butler record.
    inv.folders = inv.folders | {obs(2), obs(3)}
    started = datetime(2025, 12, 31, 3, 4, tzinfo=UTC)
    inv.arrivals[obs(2)] = arrival_run(
        obs(2), ARRIVAL_ARRIVING, status="running", step="arriving", started=started
    )
    # Ingested, due (a calibration), still arriving: not missing.
    inv.exposures[obs(3)] = EmbargoExposure(3, due=True, end=datetime(2026, 1, 1, tzinfo=UTC))
    inv.arrivals[obs(3)] = arrival_run(obs(3), ARRIVAL_ARRIVING, status="running", step="arriving")
    for seq in (2, 3):
        verdict = judge(inv, obs(seq))
        assert verdict.klass == "arriving" and verdict.reason.startswith("arriving"), verdict
        assert not verdict.repairable
    assert "arriving since 2025-12-31 03:04 UTC" in judge(inv, obs(2)).reason
    assert reconciliation(inv).ok


def test_an_incomplete_arrival_needs_action_and_says_how_many_sensors_are_missing() -> None:
    inv = unembargoed(1)
    inv.folders = inv.folders | {obs(2)}
    inv.exposures[obs(2)] = EmbargoExposure(2, due=True, end=datetime(2026, 1, 1, tzinfo=UTC))
    inv.arrivals[obs(2)] = arrival_run(obs(2), ARRIVAL_INCOMPLETE, status="failed", step="incomplete",
                                       missing=3, expected=205)  # fmt: skip
    verdict = judge(inv, obs(2))
    assert verdict.klass == "incomplete" and not verdict.repairable
    assert verdict.reason.startswith("incomplete: 3 of 205 expected sensors have no raw. Re-send")
    assert f"`unembargo arrivals sweep --day {DAY}`" in verdict.reason
    assert not reconciliation(inv).ok


def test_an_embargoed_arrival_gives_its_embargo_end_and_others_the_rules_end() -> None:
    inv = unembargoed(1)
    end = datetime(2026, 1, 4, 8, 0, tzinfo=UTC)
    for seq in (2, 3):
        inv.folders = inv.folders | {obs(seq)}
        inv.exposures[obs(seq)] = EmbargoExposure(
            seq, due=False, end=datetime(2026, 1, 1, tzinfo=UTC), embargo_end=end
        )
    inv.arrivals[obs(2)] = arrival_run(
        obs(2), ARRIVAL_EMBARGOED, status="running", step="embargoed", embargo_end=end
    )
    waiting = judge(inv, obs(2))
    assert waiting.klass == "embargoed"
    assert "arrived complete; waiting for its embargo end at 2026-01-04 08:00:00 UTC" in waiting.reason
    assert "its embargo ends 2026-01-04 08:00 UTC" in judge(inv, obs(3)).reason


def test_a_folder_no_arrival_has_heard_of_points_at_the_sweep() -> None:
    inv = unembargoed(1)
    inv.folders = inv.folders | {obs(2)}
    verdict = judge(inv, obs(2))
    assert verdict.klass == "no-butler-record"
    assert (
        "no arrival workflow has heard of it (if arrivals ingest this bucket, "
        f"`unembargo arrivals sweep --day {DAY}` finds it)" in verdict.reason
    )


def test_the_arrival_column_shows_only_on_days_with_arrivals() -> None:
    inv = unembargoed(1, 2)
    assert "arrival" not in [c.header for c in verdict_table(reconciliation(inv)).columns]
    inv.arrivals[obs(1)] = arrival_run(obs(1), ARRIVAL_STARTED, status="completed", step="started")
    table = verdict_table(reconciliation(inv))
    column = next(c for c in table.columns if c.header == "arrival")
    assert list(column._cells) == [ARRIVAL_STARTED, NOT_ARRIVED]
    assert reconciliation(inv).as_dict()["exposures"][0]["arrival"]["state"] == ARRIVAL_STARTED
