"""reconcile's classes for what needs action beyond the steps, on hand-built inventories (no services)."""

from __future__ import annotations

from datetime import UTC, datetime

from unembargo.adapters.destination import parse_staging
from unembargo.cli.reconcile import STEPS_HEADER, verdict_table
from unembargo.client.reconcile import Reconciliation, classify, judge, staging_files
from unembargo.models import names
from unembargo.models.exposure import STEPS, Step
from unembargo.models.reconcile import (
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
