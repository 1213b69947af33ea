"""Steps 2 and 3 of an exposure, the Data Butler side: the dimension-record yaml
beside the zip (export) and the zip's datasets in the main butler (ingest).

Both check their "done when" first and never overwrite: an existing yaml that is
not what the embargo butler says now, a dataset the main butler holds under
another id, or a main-butler exposure record that differs from the embargo one is
a named, non-retryable error for an operator, never something fixed in place.
"""

from __future__ import annotations

from pathlib import Path

from lsst.daf.butler import (
    Butler,
    DatasetRef,
)
from lsst.resources import ResourcePath
from temporalio import activity

from unembargo.activities.context import Resources, checkpoint, heartbeating
from unembargo.adapters import destination
from unembargo.adapters.butler import (
    Records,
    check_existing_yaml,
    check_obs_id_free,
    collect_records,
    count_records,
    exposure_record,
    holds_exposure,
    import_records,
    overlapping_tracts,
    partial_overlap,
    present_ids,
    record_differences,
    register_dataset_types,
    write_yaml,
    yaml_problems,
    zip_refs,
)
from unembargo.models import names
from unembargo.models.errors import (
    RERUN,
    DimensionRecordConflict,
    SourceMismatch,
)
from unembargo.models.exposure import (
    STEPS,
    ExportReceipt,
    Exposure,
    IngestInput,
    IngestReceipt,
    Step,
    StepInput,
)


class ButlerActivities:
    """The export and ingest steps, sharing one worker's butlers and ledger."""

    def __init__(self, resources: Resources) -> None:
        self._res = resources

    @activity.defn(name=STEPS[Step.EXPORT].activity)
    def export_dimensions(self, inp: StepInput) -> ExportReceipt:
        """Write ``<obs_id>_dimensions.yaml`` beside the zip unless it is there already."""
        exp = inp.exposure
        final = self._res.dest_path(names.yaml_relpath(exp.instrument, exp.day_obs, exp.obs_id))
        with heartbeating():
            embargo = self._res.embargo_butler()
            # Without the exposure the queries below find nothing, and would export nothing.
            exposure_record(embargo, exp)
            records = collect_records(embargo, exp)
            tracts = overlapping_tracts(embargo, exp, records)
            if final.exists():
                check_existing_yaml(final, records, embargo.dimensions)
                return self._export_receipt(final, records, tracts, already_done=True)
            checkpoint(Step.EXPORT, "acting")
            installed = self._write_yaml(exp, embargo, records, final)
            if not installed:
                # Another attempt installed it first: judge what is there now.
                check_existing_yaml(final, records, embargo.dimensions)
                return self._export_receipt(final, records, tracts, already_done=True)
            checkpoint(Step.EXPORT, "acted")
            return self._export_receipt(final, records, tracts, already_done=False)

    def _write_yaml(self, exp: Exposure, embargo: Butler, records: Records, final: Path) -> bool:
        """Export to a staging file, prove it imports into an empty repo, install it."""
        destination.remove_stale_staging(final)
        with destination.staged(final) as (_, staging):
            write_yaml(embargo, records, staging)
            problems = yaml_problems(staging, records, embargo.dimensions)
            if problems:
                raise SourceMismatch(
                    f"the dimension records of {exp.obs_id} in the embargo butler do not make a "
                    f"self-sufficient yaml: {'; '.join(problems)}. Nothing was installed; check "
                    "the embargo registry's records for this exposure."
                )
            self._res.record(exp, Step.EXPORT, "install")
            return destination.install(staging, final)

    def _export_receipt(
        self, final: Path, records: Records, tracts: list[int], already_done: bool
    ) -> ExportReceipt:
        return ExportReceipt(
            file=destination.receipt(self._res.settings.dest_root.resolve(), final),
            records=count_records(records),
            tracts=tracts,
            already_done=already_done,
        )

    @activity.defn(name=STEPS[Step.INGEST].activity)
    def ingest_zip(self, inp: IngestInput) -> IngestReceipt:
        """Ingest the zip's datasets into the main butler unless it returns them all."""
        exp = inp.exposure
        zip_path = self._res.dest_path(inp.zip.relpath)
        with heartbeating():
            main = self._res.main_butler()
            refs = zip_refs(zip_path, inp.zip, main.dimensions)
            present = present_ids(main, exp, refs)
            if len(present) == len(refs):
                self._check_exposure_record(main, exp)
                return IngestReceipt(datasets=len(refs), already_done=True)
            if present:
                raise partial_overlap(exp, zip_path, refs, present)
            checkpoint(Step.INGEST, "acting")
            self._ingest(main, exp, zip_path, refs)
            checkpoint(Step.INGEST, "acted")
        missing = len(refs) - len(present_ids(main, exp, refs))
        if missing:
            raise RuntimeError(f"ingest_zip of {zip_path} returned but {missing} datasets are not found")
        return IngestReceipt(datasets=len(refs), already_done=False)

    def _ingest(self, main: Butler, exp: Exposure, zip_path: Path, refs: list[DatasetRef]) -> None:
        """Records from the exported yaml, a record check, then the zip itself."""
        yaml_path = self._res.dest_path(names.yaml_relpath(exp.instrument, exp.day_obs, exp.obs_id))
        # A record the main butler holds already is compared before any of the yaml's records
        # join it (importing never replaces it); one the yaml brings, once it is in.
        held = holds_exposure(main, exp)
        if held:
            self._check_exposure_record(main, exp)
        else:
            check_obs_id_free(main, exp)
        import_records(main, yaml_path, exp)
        if not held:
            self._check_exposure_record(main, exp)
        register_dataset_types(main, refs)
        self._res.record(exp, Step.INGEST, "ingest_zip")
        main.ingest_zip(ResourcePath(zip_path), transfer="direct")

    def _check_exposure_record(self, main: Butler, exp: Exposure) -> None:
        """Raise DimensionRecordConflict if main and embargo disagree on the exposure."""
        differences = record_differences(
            exposure_record(main, exp, "main"), exposure_record(self._res.embargo_butler(), exp)
        )
        if differences:
            raise DimensionRecordConflict(
                f"the main butler's exposure record {exp.exposure_id} ({exp.obs_id}) differs from "
                f"the embargo butler's in {'; '.join(differences)}. Importing records never "
                "replaces existing ones, so the main butler still has its own. Correct the wrong "
                f"record (main or embargo), then {RERUN}."
            )
