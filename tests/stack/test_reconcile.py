"""`unembargo reconcile`: the classifier on hand-made inventories, then a whole day on the real stack.

The unit tests build an ``Inventory`` by hand, one exposure per case, so each class
and each reason is pinned down without services. The end-to-end test builds a day
with an exposure in every class on the real stack (real workflows, real undoing of
steps), checks the verdicts, repairs the day and checks every eligible exposure
independently (tests/stack/verify.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from lsst.daf.butler import Butler
from rich.console import Console
from sqlmodel import Session
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from support import WorkerProcess, plant_foreign_zip, poll_until, start_one
from unembargo.cli.reconcile import staging_table
from unembargo.client.reconcile import ReconcileRequest, Reconciliation, classify, judge, reconcile_day
from unembargo.devstack.seed import SeededExposure, seed_exposure
from unembargo.models import names
from unembargo.models.exposure import STEPS, Policy, StepQueues
from unembargo.models.reconcile import (
    EmbargoExposure,
    Inventory,
    MainHolding,
    ObsDataset,
    RucioDay,
    RucioFile,
    WorkflowRun,
)
from unembargo.models.settings import EmbargoRule, Settings
from unembargo.models.tables import connect, step_queues
from verify import check_unembargoed

if TYPE_CHECKING:
    from rucio.client import Client as RucioClient

DAY = 20251231
INST = "LSSTCam"
ENDED = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)


def obs(seq: int) -> str:
    return f"MC_O_{DAY}_{seq:06d}"


def empty() -> Inventory:
    return Inventory(INST, DAY, bucket_url=f"s3://embargo/{INST}/{DAY}/")


def in_embargo(inv: Inventory, obs_id: str, due: bool = True, tracts: tuple[int, ...] = (7, 9)) -> None:
    """The exposure's folder is in the bucket and its record in the embargo butler."""
    inv.folders = inv.folders | {obs_id}
    inv.exposures[obs_id] = EmbargoExposure(int(obs_id[-6:]), due=due, end=ENDED, tracts=tracts)


def unembargo(inv: Inventory, obs_id: str) -> None:
    """Everything a fully unembargoed exposure leaves behind, workflow included."""
    exp = inv.exposures[obs_id]
    datasets = frozenset(names.exposure_datasets(INST, DAY, obs_id, exp.tracts))
    files = dict(inv.rucio.files)
    for name in (names.zip_relpath(INST, DAY, obs_id), names.yaml_relpath(INST, DAY, obs_id)):
        inv.destination[name] = 1000 + len(name)
        files[name] = RucioFile(1000 + len(name), "0000abcd", "0" * 32, available=True, parents=datasets)
    inv.main[obs_id] = MainHolding(complete=True)
    inv.rucio = RucioDay(files=files, obs={**inv.rucio.obs, obs_id: ObsDataset(False, names.BACKUP_VALUE)})
    inv.workflows[obs_id] = WorkflowRun(names.workflow_id(INST, obs_id), "completed", "done")


def day_with(*obs_ids: str, due: bool = True) -> Inventory:
    inv = empty()
    for obs_id in obs_ids:
        in_embargo(inv, obs_id, due=due)
        unembargo(inv, obs_id)
    return inv


def test_everything_in_place_is_unembargoed() -> None:
    inv = day_with(obs(1))
    verdict = judge(inv, obs(1))
    assert (verdict.klass, verdict.done, verdict.reason) == ("unembargoed", tuple(STEPS), "every step done")
    assert not verdict.repairable


def test_not_yet_due_and_untouched_is_embargoed_with_its_end_time() -> None:
    inv = empty()
    in_embargo(inv, obs(1), due=False)
    verdict = judge(inv, obs(1))
    assert verdict.klass == "embargoed"
    assert "not yet past its embargo period" in verdict.reason and "2026-01-01 00:00 UTC" in verdict.reason


def test_folder_without_butler_record_needs_action() -> None:
    inv = empty()
    inv.folders = frozenset({obs(1)})
    verdict = judge(inv, obs(1))
    assert (
        verdict.klass == "no-butler-record" and "no exposure record in the embargo butler" in verdict.reason
    )
    assert verdict.exposure_id is None and not verdict.repairable


def test_running_workflow_says_step_attempt_and_last_error() -> None:
    inv = empty()
    in_embargo(inv, obs(1))
    inv.workflows[obs(1)] = WorkflowRun(
        "w", "running", "register", activity="register_in_rucio", attempt=4, last_failure="connection refused"
    )
    verdict = judge(inv, obs(1))
    assert verdict.klass == "running"
    assert verdict.reason == "at step register, register_in_rucio attempt 4, last error: connection refused"


def test_running_beats_everything_even_when_all_is_done() -> None:
    inv = day_with(obs(1))
    inv.workflows[obs(1)] = WorkflowRun("w", "running", "tag")
    assert judge(inv, obs(1)).klass == "running"


def test_failed_workflow_gives_its_error_and_the_steps_done() -> None:
    inv = empty()
    in_embargo(inv, obs(1))
    inv.destination[names.zip_relpath(INST, DAY, obs(1))] = 5
    inv.workflows[obs(1)] = WorkflowRun("w", "failed", "zip", error="step zip: DestinationConflict ...")
    verdict = judge(inv, obs(1))
    assert verdict.klass == "failed"
    assert verdict.reason == "step zip: DestinationConflict ... (done: zip)"
    assert verdict.repairable


def test_half_done_names_each_undone_step_and_why() -> None:
    cases = {
        "attachment": "register (the zip is not in Dataset/LSSTCam/raw/Tract9/20251231)",
        "metadata": "tag (arcBackup is not set)",
        "yaml": "export (no dimension yaml at the destination)",
        "zip": "zip (no zip at the destination)",
        "ingest": "ingest (the main butler holds 200 of its 205 raws)",
        "open": "tag (the Obs dataset is open)",
    }
    for undo, expected in cases.items():
        inv = day_with(obs(1))
        _undo(inv, obs(1), undo)
        verdict = judge(inv, obs(1))
        assert verdict.klass == "half-done", (undo, verdict)
        assert expected in verdict.reason, (undo, verdict.reason)
        assert "its workflow completed" in verdict.reason
        assert verdict.repairable


def _undo(inv: Inventory, obs_id: str, what: str) -> None:
    zip_name, yaml_name = names.zip_relpath(INST, DAY, obs_id), names.yaml_relpath(INST, DAY, obs_id)
    files, obs_sets = dict(inv.rucio.files), dict(inv.rucio.obs)
    if what == "attachment":
        tract = names.tract_dataset(INST, DAY, 9)
        files[zip_name] = replace(files[zip_name], parents=files[zip_name].parents - {tract})
    elif what == "metadata":
        obs_sets[obs_id] = replace(obs_sets[obs_id], backup=None)
    elif what == "open":
        obs_sets[obs_id] = replace(obs_sets[obs_id], open=True)
    elif what in ("yaml", "zip"):
        del inv.destination[yaml_name if what == "yaml" else zip_name]
    elif what == "ingest":
        inv.main[obs_id] = MainHolding(False, "the main butler holds 200 of its 205 raws")
    inv.rucio = RucioDay(files, obs_sets)


def test_registered_size_must_match_the_file_and_checksums_must_be_there() -> None:
    inv = day_with(obs(1))
    zip_name = names.zip_relpath(INST, DAY, obs(1))
    files = dict(inv.rucio.files)
    files[zip_name] = replace(files[zip_name], bytes=1, md5=None)
    inv.rucio = replace(inv.rucio, files=files)
    reason = judge(inv, obs(1)).reason
    assert f"the zip is registered with 1 bytes, the file has {inv.destination[zip_name]}" in reason
    assert "the zip has no adler32/md5 in Rucio" in reason


def test_no_tract_exposure_belongs_in_no_tract() -> None:
    inv = empty()
    in_embargo(inv, obs(1), tracts=())
    unembargo(inv, obs(1))
    assert judge(inv, obs(1)).klass == "unembargoed"
    yaml = names.yaml_relpath(INST, DAY, obs(1))
    assert names.tract_dataset(INST, DAY, None) in inv.rucio.files[yaml].parents


def test_terminated_run_with_steps_done_is_half_done() -> None:
    inv = empty()
    in_embargo(inv, obs(1))
    inv.destination[names.zip_relpath(INST, DAY, obs(1))] = 5
    inv.workflows[obs(1)] = WorkflowRun("w", "terminated", "export")
    verdict = judge(inv, obs(1))
    assert verdict.klass == "half-done"
    assert verdict.reason.startswith("done: zip; not done: export (no dimension yaml at the destination), ")
    assert verdict.reason.endswith("its last run terminated at step export")


def test_due_and_untouched_is_missing() -> None:
    inv = empty()
    in_embargo(inv, obs(1))
    verdict = judge(inv, obs(1))
    assert verdict.klass == "missing"
    assert verdict.reason == "past its embargo period and no step done; no workflow"
    assert verdict.repairable


def test_everything_undone_after_a_completed_run_is_missing() -> None:
    inv = empty()
    in_embargo(inv, obs(1))
    inv.workflows[obs(1)] = WorkflowRun("w", "completed", "done")
    verdict = judge(inv, obs(1))
    assert verdict.klass == "missing" and "its workflow completed" in verdict.reason


def test_butler_record_without_folder_is_missing_and_says_so() -> None:
    inv = empty()
    in_embargo(inv, obs(1))
    inv.folders = frozenset()
    verdict = judge(inv, obs(1))
    assert verdict.klass == "missing" and "no folder in s3://embargo/LSSTCam/20251231/" in verdict.reason


def test_a_workflow_and_nothing_else_is_missing_but_not_repairable() -> None:
    inv = empty()
    inv.workflows[obs(1)] = WorkflowRun("w", "completed", "done")
    verdict = judge(inv, obs(1))
    assert verdict.klass == "missing" and not verdict.repairable
    assert verdict.reason.startswith("known only to Temporal (its workflow completed): not in the embargo")


def test_files_or_datasets_without_a_folder_are_orphans() -> None:
    inv = empty()
    inv.destination[names.zip_relpath(INST, DAY, obs(97))] = 10
    inv.rucio = RucioDay(obs={obs(98): ObsDataset(True)})
    inv.main[obs(99)] = MainHolding(True)
    verdicts = {v.obs_id: v for v in classify(inv)}
    assert {v.klass for v in verdicts.values()} == {"orphan"}
    assert "MC_O_20251231_000097.zip at the destination" in verdicts[obs(97)].reason
    assert "its Obs dataset in Rucio" in verdicts[obs(98)].reason
    assert "raws in the main butler" in verdicts[obs(99)].reason
    assert all("not in the embargo bucket (s3://embargo/" in v.reason for v in verdicts.values())
    assert not any(v.repairable for v in verdicts.values())


def test_half_done_before_its_embargo_is_reported_but_not_repaired() -> None:
    inv = empty()
    in_embargo(inv, obs(1), due=False)
    inv.destination[names.zip_relpath(INST, DAY, obs(1))] = 5
    verdict = judge(inv, obs(1))
    assert verdict.klass == "half-done" and "--repair leaves it alone" in verdict.reason
    assert not verdict.repairable


def test_unembargoed_before_its_embargo_says_so() -> None:
    inv = day_with(obs(1), due=False)
    verdict = judge(inv, obs(1))
    assert verdict.klass == "unembargoed" and "although not yet past its embargo period" in verdict.reason


def test_classify_orders_by_class_then_obs_id_and_counts() -> None:
    inv = day_with(obs(3), obs(1))
    in_embargo(inv, obs(2))
    in_embargo(inv, obs(4), due=False)
    verdicts = classify(inv)
    assert [(v.klass, v.obs_id) for v in verdicts] == [
        ("unembargoed", obs(1)),
        ("unembargoed", obs(3)),
        ("embargoed", obs(4)),
        ("missing", obs(2)),
    ]
    rec = Reconciliation(INST, DAY, verdicts, {})
    assert rec.counts["unembargoed"] == 2 and rec.counts["missing"] == 1 and not rec.ok
    assert Reconciliation(INST, DAY, verdicts[:3], {}).ok
    assert rec.as_dict()["exposures"][3] | {"workflow": None} == {
        "obs_id": obs(2), "class": "missing", "done": [], "exposure_id": 2, "due": True, "workflow": None,
        "arrival": None,
        "reason": "past its embargo period and no step done; no workflow",
    }  # fmt: skip


def test_names_parse_what_they_build() -> None:
    assert names.parse_obs_dataset(names.obs_dataset(INST, DAY, obs(5))) == (INST, DAY, obs(5))
    assert names.parse_day_file(names.zip_relpath(INST, DAY, obs(5))) == (obs(5), "zip")
    assert names.parse_day_file(names.yaml_relpath(INST, DAY, obs(5))) == (obs(5), "yaml")
    assert names.parse_day_file(f"{INST}/{DAY}/notes.txt") is None
    assert names.day_workflows_query(INST, DAY) == (
        'WorkflowType = "UnembargoExposure" AND instrument = "LSSTCam" AND day_obs = 20251231'
    )


# ---------------------------------------------------------------- a whole day on the real stack

# fresh_day() draws days from 2000-2019: this one is the module's alone in the session.
E2E_DAY = 19991231
# One exposure per case, by seq_num.
DONE = (1, 2)
UNDONE = {3: "attachment", 4: "metadata", 5: "yaml", 6: "zip"}
KILLED, FAILED, RUNNING, MISSING = 7, 8, 9, 10
EMBARGOED = 50
ORPHAN_AT_DEST, ORPHAN_IN_RUCIO = 97, 98
# Exposures from seq_num EMBARGOED on stay embargoed for a century; the rest after 80 h.
RULES = [
    EmbargoRule(where=f"exposure.seq_num >= {EMBARGOED}", period=timedelta(days=36500)),
    EmbargoRule(where="", period=timedelta(hours=80)),
]
# Tiny raws: the test is about bookkeeping, not bytes.
SMALL = 4096
POLICY = Policy(heartbeat_s=10)
# A raw run no zip's index names: a dataset there is one the main butler holds beyond the zip.
EXTRA_RUN = "LSSTCam/raw/reconcile-extra"


def e2e_obs(seq: int) -> str:
    return f"MC_O_{E2E_DAY}_{seq:06d}"


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`unembargo ...` in a child process, with the rules of this module."""
    rules = json.dumps([{"where": r.where, "period": r.period.total_seconds()} for r in RULES])
    return subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", *args],
        env={**os.environ, **settings.environment(), "UNEMBARGO_EMBARGO_RULES": rules},
        capture_output=True,
        text=True,
        timeout=600,
    )


async def start(
    client: Client, settings: Settings, seeded: SeededExposure, queues: StepQueues, policy: Policy = POLICY
) -> WorkflowHandle[object, object]:
    return await start_one(client, settings, seeded, policy, queues)


async def _state(handle: WorkflowHandle[object, object]) -> dict[str, object]:
    return await handle.query("state")  # type: ignore[no-any-return]


async def test_a_day_in_every_class_is_classified_exactly_then_repaired(
    settings: Settings, worker: WorkerProcess, client: Client, rucio: RucioClient
) -> None:
    own = settings.model_copy(update={"embargo_rules": RULES})
    seqs = [*DONE, *UNDONE, KILLED, FAILED, MISSING, EMBARGOED]
    seeded = {seq: seed_exposure(settings, E2E_DAY, seq, file_size=SMALL) for seq in seqs}
    seeded[RUNNING] = seed_exposure(settings, E2E_DAY, RUNNING, file_size=SMALL, detectors=range(200))
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    day_dir = settings.dest_root / "LSSTCam" / str(E2E_DAY)
    foreign = day_dir / f"{e2e_obs(FAILED)}.zip"
    plant_foreign_zip(foreign)

    # Run what must run; hold one at register (nobody serves its Rucio queue), then kill it.
    done = [await start(client, settings, seeded[seq], queues) for seq in (*DONE, *UNDONE)]
    failed = await start(client, settings, seeded[FAILED], queues)
    nowhere = names.location_queue(f"nobody-{settings.rucio_rse.lower()}")
    killed = await start(client, settings, seeded[KILLED], {**queues, "register": nowhere, "tag": nowhere})
    waiting = Policy(heartbeat_s=10, incomplete_wait_s=600, incomplete_poll_s=2)
    running = await start(client, settings, seeded[RUNNING], queues, waiting)
    for handle in done:
        await handle.result()
    with pytest.raises(WorkflowFailureError):
        await failed.result()

    async def at_register() -> bool:
        return bool((await _state(killed))["steps"]["ingest"]["done"])  # type: ignore[index]

    await poll_until(at_register, timeout=180, what="the killed exposure to reach register")
    await killed.terminate("reconcile test: a killed workflow")
    await poll_until(lambda: _waiting(running), timeout=120, what="the incomplete exposure to wait")

    # Undo one step of each of four unembargoed exposures, and leave two orphans.
    _undo_on_stack(settings, rucio, seeded)
    (day_dir / f"{e2e_obs(ORPHAN_AT_DEST)}.zip").write_bytes(b"left by an old run")
    rucio.add_dataset(settings.rucio_scope, names.obs_dataset("LSSTCam", E2E_DAY, e2e_obs(ORPHAN_IN_RUCIO)))

    before = await reconcile_day(own, ReconcileRequest(day_obs=E2E_DAY), client)
    _check_verdicts(before, seeded)

    # The operator fixes what made one fail, and the incomplete exposure's raws arrive.
    foreign.unlink()
    seed_exposure(settings, E2E_DAY, RUNNING, file_size=SMALL)
    await running.result()
    repaired = cli(own, "reconcile", "--day", str(E2E_DAY), "--repair", "--json")

    why = repaired.stdout[-3000:] + repaired.stderr[-3000:] + worker.output()[-3000:]
    assert repaired.returncode == 0, why
    after = json.loads(repaired.stdout)
    eligible = [*DONE, *UNDONE, KILLED, FAILED, RUNNING, MISSING]
    assert after["counts"] == {
        "unembargoed": len(eligible), "embargoed": 1, "arriving": 0, "running": 0, "failed": 0,
        "half-done": 0, "missing": 0, "incomplete": 0, "no-butler-record": 0, "corrupt": 0, "orphan": 2,
    }, after  # fmt: skip
    started = {e["obs_id"]: e["final"] for e in after["repair"]["started"]}
    assert started == {e2e_obs(seq): "completed" for seq in (*UNDONE, KILLED, FAILED, MISSING)}
    for seq in eligible:
        exp = seeded[seq]
        check_unembargoed(settings, E2E_DAY, exp.obs_id, exp.exposure_id, list(exp.tracts))
    assert not (day_dir / f"{e2e_obs(EMBARGOED)}.zip").exists()
    assert (day_dir / f"{e2e_obs(ORPHAN_AT_DEST)}.zip").read_bytes() == b"left by an old run"

    table = cli(own, "reconcile", "--day", str(E2E_DAY))
    assert table.returncode == 0, table.stdout + table.stderr
    assert "unembargoed" in table.stdout and "orphan" in table.stdout and "nothing to do" in table.stdout
    await _verify_finds_what_names_do_not(own, client, seeded, day_dir)


async def _verify_finds_what_names_do_not(
    settings: Settings, client: Client, seeded: dict[int, SeededExposure], day_dir: Path
) -> None:
    """--verify: real zips, yamls and main-butler datasets pass; a bucket object changed after
    unembargo, a zip of another exposure under an exposure's name, a yaml record changed, a
    dataset the main butler holds that the zip's index lacks, and staging files left behind
    are each reported. In process where the command line adds nothing (it is timed above)."""
    verify = ReconcileRequest(day_obs=E2E_DAY, verify=True)
    deep = await reconcile_day(settings, verify, client)
    assert deep.ok and deep.verified and deep.counts["unembargoed"] == 10, [
        (v.obs_id, v.klass, v.reason) for v in deep.verdicts if v.klass != "unembargoed"
    ]

    changed = seeded[DONE[0]]
    sidecar = next(name for name in changed.names if name.endswith(".json") and "expectedSensors" not in name)
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    s3.put_object(
        Bucket=settings.s3_bucket, Key=changed.prefix + sidecar, Body=b'{"changed": "after unembargo"}'
    )
    # Exposure 3's zip replaced by exposure 4's (kept aside and put back after).
    own_zip, other_zip = day_dir / f"{e2e_obs(3)}.zip", day_dir / f"{e2e_obs(4)}.zip"
    kept = own_zip.with_name("kept-aside.zip")
    own_zip.rename(kept)
    own_zip.write_bytes(other_zip.read_bytes())
    (day_dir / f"{e2e_obs(5)}.zip.transfer-tmp").write_bytes(b"old cron tool")
    # Exposure 2's yaml with one record changed; exposure 6 with a raw the main butler
    # holds in another raw run, which no zip's index lists (its count of data IDs is the same).
    yaml_path = day_dir / f"{e2e_obs(DONE[1])}_dimensions.yaml"
    yaml_text = yaml_path.read_text()
    renamed = yaml_text.replace(f"obs_id: {e2e_obs(DONE[1])}", f"obs_id: {e2e_obs(902)}", 1)
    assert renamed != yaml_text
    yaml_path.write_text(renamed)
    with Butler.from_config(settings.main_butler, writeable=True) as main:
        main.collections.register(EXTRA_RUN)
        [extra] = main.registry.insertDatasets(
            "raw", [{"instrument": INST, "exposure": seeded[6].exposure_id, "detector": 0}], EXTRA_RUN
        )

    shallow = await reconcile_day(settings, ReconcileRequest(day_obs=E2E_DAY), client)
    # By names, all is done: but a staging file is left.
    assert shallow.counts["corrupt"] == 0 and not shallow.ok
    run = cli(settings, "reconcile", "--day", str(E2E_DAY), "--verify", "--json")
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    found = {e["obs_id"]: e for e in json.loads(run.stdout)["exposures"]}
    corrupt = {obs_id for obs_id, e in found.items() if e["class"] == "corrupt"}
    assert corrupt == {e2e_obs(seq) for seq in (DONE[0], DONE[1], 3, 6)}, found
    assert f"does not match s3://{settings.s3_bucket}/" in found[changed.obs_id]["reason"]
    assert f"{sidecar} is " in found[changed.obs_id]["reason"], found[changed.obs_id]["reason"]
    assert (
        f"belongs to another exposure (its butler index lists LSSTCam exposure {seeded[4].exposure_id})"
        in (found[e2e_obs(3)]["reason"])
    )
    assert (
        "export: the yaml's records differ from the embargo butler's: exposure: 1 different"
        in found[e2e_obs(DONE[1])]["reason"]
    ), found[e2e_obs(DONE[1])]["reason"]
    assert (
        "ingest: the main butler's datasets do not match the zip's index: the main butler holds 1 "
        f"dataset(s) of it that the zip's index lacks ({extra.id})" in found[e2e_obs(6)]["reason"]
    ), found[e2e_obs(6)]["reason"]
    [staged] = json.loads(run.stdout)["staging"]
    assert (staged["obs_id"], staged["made_by"], staged["in_use"]) == (e2e_obs(5), "cron", False)
    console = Console(record=True, width=400)
    console.print(staging_table(shallow))
    assert "stale: remove it" in console.export_text()
    own_zip.unlink()
    kept.rename(own_zip)
    yaml_path.write_text(yaml_text)
    with Butler.from_config(settings.main_butler, writeable=True) as main:
        main.registry.removeDatasets([extra])


async def _waiting(handle: WorkflowHandle[object, object]) -> bool:
    return bool((await _state(handle))["waiting_for"])


def _undo_on_stack(settings: Settings, rucio: RucioClient, seeded: dict[int, SeededExposure]) -> None:
    """Undo one step of each UNDONE exposure, as an accident would."""
    scope = settings.rucio_scope
    day_dir = settings.dest_root / "LSSTCam" / str(E2E_DAY)
    for seq, what in UNDONE.items():
        obs_id = e2e_obs(seq)
        if what == "attachment":
            first = names.exposure_datasets("LSSTCam", E2E_DAY, obs_id, seeded[seq].tracts)[0]
            zip_did = {"scope": scope, "name": names.zip_relpath("LSSTCam", E2E_DAY, obs_id)}
            rucio.detach_dids(scope, first, [zip_did])
        elif what == "metadata":
            rucio.delete_metadata(scope, names.obs_dataset("LSSTCam", E2E_DAY, obs_id), names.BACKUP_KEY)
        else:
            suffix = "_dimensions.yaml" if what == "yaml" else ".zip"
            (day_dir / f"{obs_id}{suffix}").unlink()


def _check_verdicts(rec: Reconciliation, seeded: dict[int, SeededExposure]) -> None:
    """Every exposure in its class, with the reason that says why."""
    got = {v.obs_id: v for v in rec.verdicts}
    expected = {
        **{e2e_obs(seq): "unembargoed" for seq in DONE},
        **{e2e_obs(seq): "half-done" for seq in (*UNDONE, KILLED)},
        e2e_obs(FAILED): "failed",
        e2e_obs(RUNNING): "running",
        e2e_obs(MISSING): "missing",
        e2e_obs(EMBARGOED): "embargoed",
        e2e_obs(ORPHAN_AT_DEST): "orphan",
        e2e_obs(ORPHAN_IN_RUCIO): "orphan",
    }
    assert {k: v.klass for k, v in got.items()} == expected, {k: (v.klass, v.reason) for k, v in got.items()}
    first = names.exposure_datasets("LSSTCam", E2E_DAY, e2e_obs(3), seeded[3].tracts)[0]
    reasons = {
        1: "every step done",
        3: f"not done: register (the zip is not in {first}); its workflow completed",
        4: "not done: tag (arcBackup is not set); its workflow completed",
        5: "not done: export (no dimension yaml at the destination); its workflow completed",
        6: "not done: zip (no zip at the destination); its workflow completed",
        KILLED: "done: zip, export, ingest; not done: register (the zip is not registered; the yaml is not "
        "registered), tag (no Obs dataset); its last run terminated at step register",
        FAILED: "does not match",
        MISSING: "past its embargo period and no step done; no workflow",
        EMBARGOED: "not yet past its embargo period under the configured rules",
        ORPHAN_AT_DEST: f"{e2e_obs(ORPHAN_AT_DEST)}.zip at the destination; no workflow",
        ORPHAN_IN_RUCIO: "found: its Obs dataset in Rucio; no workflow",
    }
    for seq, text in reasons.items():
        assert text in got[e2e_obs(seq)].reason, (seq, got[e2e_obs(seq)].reason)
    assert got[e2e_obs(FAILED)].reason.startswith("step zip: ")
    # At the step its search attribute names (zip, or "waiting" while it waits for raws).
    assert got[e2e_obs(RUNNING)].reason.startswith("at step ")
    assert not rec.ok
    assert set(rec.seconds) == {"s3", "butler", "destination", "rucio", "temporal", "total"}


def test_a_bad_day_is_a_usage_error(settings: Settings) -> None:
    out = cli(settings, "reconcile", "--day", "20251340")
    assert out.returncode == 2 and "not a YYYYMMDD date" in out.stderr and "Traceback" not in out.stderr
