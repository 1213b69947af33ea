"""The Data Butler as an external system: the exposure's records, the self-sufficient yaml,
the zip's datasets and what the main butler already holds. No Temporal here: the
activities in activities/butler.py call these."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lsst.daf.butler import (
    Butler,
    DataCoordinate,
    DatasetId,
    DatasetRef,
    DimensionRecord,
    DimensionUniverse,
    MissingCollectionError,
    MissingDatasetTypeError,
)
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import ZipIndex
from lsst.daf.butler.registry import ConflictingDefinitionError
from lsst.resources import ResourcePath
from temporalio.exceptions import CancelledError

from unembargo.adapters import libyaml
from unembargo.models.errors import (
    RERUN,
    DatasetConflict,
    DestinationConflict,
    DimensionRecordConflict,
    MissingExposure,
    SourceMismatch,
)
from unembargo.models.exposure import (
    Exposure,
    FileReceipt,
)

# Records keyed by element name, then by the record's data ID.
Records = dict[str, dict[DataCoordinate, DimensionRecord]]


# Data ID shapes whose expanded records make the yaml self-sufficient: the exposure
# on every detector of its instrument (any raw, science, wavefront or guider, finds
# its detector), its visits, their visit systems, and the visits' detector regions.
# Expanded data IDs carry every record they depend on (instrument, day_obs, group,
# physical_filter, visit_definition, visit_system_membership, ...).
RECORD_SHAPES: tuple[tuple[str, ...], ...] = (
    ("exposure", "detector"),
    ("exposure", "visit"),
    ("exposure", "visit", "visit_system"),
    ("exposure", "visit", "detector"),
)


# At most this many differences are named in an error message.
_SHOWN = 5


# Dataset types of an exposure's raws; guider_raw only where the registry has it.
RAW_TYPES = ("raw", "guider_raw")


# The yaml is written, read back into an empty repo and imported into the main butler:
# through libyaml, each several times faster than PyYAML's pure-Python code.
libyaml.use_for_butler_transfers()


def exposure_record(butler: Butler, exp: Exposure, which: str = "embargo") -> DimensionRecord:
    """The exposure record of ``exp`` in the ``which`` butler; MissingExposure if absent."""
    found = butler.query_dimension_records(
        "exposure", instrument=exp.instrument, exposure=exp.exposure_id, explain=False
    )
    if which == "main" and (not found or found[0].obs_id != exp.obs_id):
        other = found[0].obs_id if found else _id_of_obs(butler, exp)
        if other is not None:
            found_obs = found[0].obs_id if found else None
            raise DimensionRecordConflict(main_record_conflict(exp, found_obs, None if found else other))
    if not found or found[0].obs_id != exp.obs_id:
        have = f"obs_id {found[0].obs_id!r}" if found else "no such exposure"
        raise MissingExposure(
            f"the {which} butler has {have} for {exp.instrument} exposure {exp.exposure_id}; "
            f"expected obs_id {exp.obs_id!r}. Check the exposure id and the butler settings."
        )
    return found[0]


def _id_of_obs(butler: Butler, exp: Exposure) -> int | None:
    """The id of another exposure record with ``exp``'s obs_id, if any."""
    found = butler.query_dimension_records(
        "exposure",
        instrument=exp.instrument,
        where="exposure.obs_id = wanted",
        bind={"wanted": exp.obs_id},
        explain=False,
    )
    return next((int(rec.id) for rec in found if int(rec.id) != exp.exposure_id), None)


def check_obs_id_free(main: Butler, exp: Exposure) -> None:
    """DimensionRecordConflict if ``main`` holds the exposure's obs_id under another exposure id.

    Importing the yaml would skip the exposure record (it clashes on obs_id) and bring
    in the rest: checked before the import, so nothing joins the main butler.
    """
    other = _id_of_obs(main, exp)
    if other is not None:
        raise DimensionRecordConflict(main_record_conflict(exp, other_id=other))


def main_record_conflict(exp: Exposure, found_obs_id: str | None = None, other_id: int | None = None) -> str:
    """The message for a main-butler exposure record that disagrees with ``exp`` on obs_id or id."""
    if other_id is not None:
        what = f"holds obs_id {exp.obs_id!r} as exposure {other_id}, not {exp.exposure_id}"
    else:
        what = f"holds exposure {exp.exposure_id} as obs_id {found_obs_id!r}, not {exp.obs_id!r}"
    return (
        f"the main butler {what} ({exp.instrument}). Importing records never replaces existing ones, "
        "so this exposure cannot be ingested beside it. Correct the wrong record (main or embargo), "
        f"then {RERUN}."
    )


def holds_exposure(butler: Butler, exp: Exposure) -> bool:
    """Whether ``butler`` has a record of the exposure's id (whatever it says)."""
    found = butler.query_dimension_records(
        "exposure", instrument=exp.instrument, exposure=exp.exposure_id, explain=False, limit=1
    )
    return bool(found)


def collect_records(butler: Butler, exp: Exposure) -> Records:
    """Every record the exposure, its detectors and its visits need, from expanded data IDs."""
    records: Records = defaultdict(dict)
    for shape in RECORD_SHAPES:
        if not all(name in butler.dimensions.dimensions.names for name in shape):
            continue
        data_ids = butler.query_data_ids(
            shape,
            instrument=exp.instrument,
            exposure=exp.exposure_id,
            with_dimension_records=True,
            explain=False,
            limit=None,
        )
        for data_id in data_ids:
            _add_records(records, data_id)
    return dict(records)


def _add_records(records: Records, data_id: DataCoordinate) -> None:
    for name in data_id.dimensions.elements:
        record = data_id.records[name]
        if record is not None and record.definition.has_own_table:
            records[name].setdefault(record.dataId, record)


def count_records(records: Records) -> int:
    return sum(len(by_id) for by_id in records.values())


def overlapping_tracts(butler: Butler, exp: Exposure, records: Records) -> list[int]:
    """Tracts the exposure's visits overlap (the butler's spatial join); [] means NoTract."""
    tracts: set[int] = set()
    for visit in records.get("visit", {}).values():
        found = butler.query_dimension_records(
            "tract", instrument=exp.instrument, visit=visit.id, explain=False, limit=None
        )
        tracts.update(int(t.id) for t in found)
    return sorted(tracts)


def record_differences(main: DimensionRecord, embargo: DimensionRecord) -> list[str]:
    """``field (main X, embargo Y)`` for each field whose values differ."""
    ours, theirs = main.toDict(), embargo.toDict()
    return [
        f"{name} (main {ours.get(name)!r}, embargo {theirs.get(name)!r})"
        for name in sorted(set(ours) | set(theirs))
        if ours.get(name) != theirs.get(name)
    ]


def write_yaml(butler: Butler, records: Records, path: Path) -> None:
    """Export exactly ``records`` (the butler orders elements so imports satisfy keys)."""
    with butler.export(filename=str(path), format="yaml") as export:
        for name, by_id in records.items():
            export.saveDimensionData(name, by_id.values())


# One empty repo per universe and process, copied for each check: makeRepo costs about
# three times what copying its two files and opening the copy does.
_EMPTY_REPOS: dict[tuple[str, int], Path] = {}


_EMPTY_REPOS_LOCK = threading.Lock()


def _empty_repo(universe: DimensionUniverse) -> Path:
    """A never-opened empty SQLite repo with ``universe`` (relocatable), made once per process."""
    key = (universe.namespace, universe.version)
    with _EMPTY_REPOS_LOCK:
        path = _EMPTY_REPOS.get(key)
        if path is None:
            path = Path(tempfile.mkdtemp(prefix="unembargo-empty-repo-"))
            atexit.register(shutil.rmtree, path, ignore_errors=True)
            Butler.makeRepo(str(path), dimensionConfig=universe.dimensionConfig)
            _EMPTY_REPOS[key] = path
        return path


@contextmanager
def scratch_repo(universe: DimensionUniverse) -> Iterator[Butler]:
    """A new, empty SQLite repo with ``universe``, deleted afterwards."""
    template = _empty_repo(universe)
    with tempfile.TemporaryDirectory(prefix="unembargo-verify-") as tmp:
        shutil.copytree(template, tmp, dirs_exist_ok=True)
        with Butler.from_config(tmp, writeable=True) as scratch:
            yield scratch


def _all_records(butler: Butler) -> Records:
    records: Records = {}
    for element in butler.dimensions.elements:
        if not element.has_own_table:
            continue
        found = butler.query_dimension_records(element.name, explain=False, limit=None)
        if found:
            records[element.name] = {r.dataId: r for r in found}
    return records


def yaml_problems(path: Path, expected: Records, universe: DimensionUniverse) -> list[str]:
    """Why ``path`` is not the self-sufficient yaml of ``expected``; [] if it is.

    Importing it into an empty repo proves it self-sufficient; reading the records
    back and comparing them proves it is this exposure's, whatever its formatting.
    """
    with scratch_repo(universe) as scratch:
        try:
            scratch.import_(filename=str(path), format="yaml")
        except (OSError, CancelledError):
            # Reading failed (disk, permissions) or the attempt was cancelled (timed out):
            # transient, not a verdict on the file.
            raise
        except Exception as err:  # noqa: BLE001 - any other failure: not self-sufficient
            return [f"it does not import into an empty repo ({_brief(err)})"]
        return records_diff(expected, _all_records(scratch))


def _brief(err: Exception, limit: int = 300) -> str:
    """Class and start of an error's text: database errors quote whole statements."""
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else f"{text[:limit]}..."


def records_diff(expected: Records, actual: Records) -> list[str]:
    """Per element: how many records are missing, unexpected or different."""
    problems = []
    for name in sorted(set(expected) | set(actual)):
        want, have = expected.get(name, {}), actual.get(name, {})
        missing = len(want.keys() - have.keys())
        extra = len(have.keys() - want.keys())
        changed = sum(1 for key in want.keys() & have.keys() if want[key] != have[key])
        counts = [
            f"{n} {what}"
            for n, what in ((missing, "missing"), (extra, "unexpected"), (changed, "different"))
            if n
        ]
        if counts:
            problems.append(f"{name}: {', '.join(counts)}")
    return problems


def check_existing_yaml(path: Path, expected: Records, universe: DimensionUniverse) -> None:
    """Accept an installed yaml only if it holds exactly the expected records."""
    problems = yaml_problems(path, expected, universe)
    if problems:
        raise DestinationConflict(
            f"{path} exists but is not this exposure's self-sufficient dimension yaml: "
            f"{'; '.join(problems[:_SHOWN])}. It was left untouched; move it aside after "
            "checking where it came from, then retry."
        )


def zip_refs(path: Path, receipt: FileReceipt, universe: DimensionUniverse) -> list[DatasetRef]:
    """The datasets a zip's index lists; SourceMismatch if it is not the zip step's file."""
    if not path.is_file():
        raise SourceMismatch(f"the zip {path} is missing; re-run the zip step (its receipt names it)")
    size = path.stat().st_size
    if size != receipt.size:
        raise SourceMismatch(
            f"the zip {path} has {size} bytes, its zip receipt says {receipt.size}; it is not "
            "the file the zip step made. Find out what replaced it before retrying."
        )
    try:
        index = ZipIndex.from_zip_file(ResourcePath(path))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise SourceMismatch(f"the zip {path} has no readable butler index ({err})") from err
    return index.refs.to_refs(universe=universe)


def present_ids(main: Butler, exp: Exposure, refs: list[DatasetRef]) -> set[DatasetId]:
    """Ids of ``refs`` the main butler returns; DatasetConflict on a data ID held under another id."""
    present: set[DatasetId] = set()
    conflicts: list[tuple[DatasetRef, DatasetRef]] = []
    for (type_name, run), wanted in _by_type_and_run(refs).items():
        held = {ref.dataId: ref for ref in _held(main, exp, type_name, run)}
        for ref in wanted:
            other = held.get(ref.dataId)
            if other is None:
                continue
            if other.id == ref.id:
                present.add(ref.id)
            else:
                conflicts.append((ref, other))
    if conflicts:
        raise dataset_conflict(exp, conflicts)
    return present


def _by_type_and_run(refs: Iterable[DatasetRef]) -> dict[tuple[str, str], list[DatasetRef]]:
    groups: dict[tuple[str, str], list[DatasetRef]] = defaultdict(list)
    for ref in refs:
        groups[(ref.datasetType.name, ref.run)].append(ref)
    return groups


def _held(main: Butler, exp: Exposure, type_name: str, run: str) -> list[DatasetRef]:
    """The exposure's datasets of one type in one run of the main butler (none if either is unknown)."""
    try:
        return main.query_datasets(
            type_name,
            collections=run,
            instrument=exp.instrument,
            exposure=exp.exposure_id,
            explain=False,
            limit=None,
        )
    except (MissingDatasetTypeError, MissingCollectionError):
        return []


def dataset_conflict(exp: Exposure, conflicts: list[tuple[DatasetRef, DatasetRef]]) -> DatasetConflict:
    shown = "; ".join(
        f"{ref.datasetType.name} {dict(ref.dataId.required)} in {ref.run}: zip {ref.id}, main {other.id}"
        for ref, other in conflicts[:_SHOWN]
    )
    return DatasetConflict(
        f"the main butler holds {len(conflicts)} of {exp.obs_id}'s data IDs under other dataset "
        f"ids ({shown}). Nothing was ingested. Find out where the main butler's datasets came "
        "from; remove them only if they are wrong, then retry."
    )


def partial_overlap(
    exp: Exposure, path: Path, refs: list[DatasetRef], present: set[DatasetId]
) -> DatasetConflict:
    """ingest_zip cannot ingest a zip some of whose datasets are already there."""
    return DatasetConflict(
        f"the main butler already holds {len(present)} of the {len(refs)} datasets of {path} "
        f"({exp.obs_id}), with the same ids, but not the rest. A zip ingest is one transaction, "
        "so they came another way (another zip, a file ingest); butler cannot ingest a zip "
        "that partly overlaps. Remove those datasets from the main butler, then retry."
    )


def import_records(main: Butler, yaml_path: Path, exp: Exposure) -> None:
    """Load the exported yaml into the main butler; existing records are kept as they are."""
    if not yaml_path.is_file():
        raise SourceMismatch(
            f"{yaml_path} is missing, so {exp.obs_id}'s dimension records cannot be loaded; "
            "the export step makes it and must run before the ingest."
        )
    main.import_(filename=str(yaml_path), format="yaml")


def register_dataset_types(main: Butler, refs: Iterable[DatasetRef]) -> None:
    """Register the zip's dataset types and RUN collections, each committed before the ingest;
    DatasetConflict if main defines a type differently.

    ``ingest_zip`` would register a missing run inside its own transaction, where two
    exposures ingested at once into a repo without that run race and one fails on a
    foreign key (seen on SQLite): registering it first, idempotently, leaves no race.
    """
    refs = list(refs)
    for run in sorted({ref.run for ref in refs}):
        main.registry.registerRun(run)
    for dataset_type in {ref.datasetType for ref in refs}:
        try:
            main.registry.registerDatasetType(dataset_type)
        except ConflictingDefinitionError as err:
            raise DatasetConflict(
                f"the main butler defines dataset type {dataset_type.name!r} differently from the "
                f"zip ({err}). Nothing was ingested; reconcile the definitions, then retry."
            ) from err
