"""The one place for every name unembargo derives: ids, paths, keys, DIDs, queues.

Pure functions of the exposure's business key, safe to import in workflow code.

    >>> workflow_id("LSSTCam", "MC_O_20251231_000010")
    'unembargo-LSSTCam-MC_O_20251231_000010'
    >>> zip_relpath("LSSTCam", 20251231, "MC_O_20251231_000010")
    'LSSTCam/20251231/MC_O_20251231_000010.zip'
    >>> obs_dataset("LSSTCam", 20251231, "MC_O_20251231_000010")
    'Dataset/LSSTCam/raw/Obs/20251231/MC_O_20251231_000010'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from unembargo.models.errors import UnsafeKey

# Values of the `step` search attribute besides the steps (models/exposure.Step): started
# but not yet at zip; an incomplete exposure waiting on a timer for its raws; all five done.
STEP_QUEUED = "queued"
STEP_WAITING = "waiting"
STEP_DONE = "done"

# Instrument and obs_id become path components, S3 keys and Rucio names: allow
# only what all three accept, so no name can escape a folder or break a DID.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")
# The form of a day_obs; check_day_obs then asks the calendar (no 20261131, no 20260230).
_DAY_OBS = re.compile(r"^(19|20|21)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])$")
_OBS_DATASET = re.compile(r"^Dataset/(?P<inst>[^/]+)/raw/Obs/(?P<day>\d{8})/(?P<obs>[^/]+)$")

ZIP_SUFFIX = ".zip"
YAML_SUFFIX = "_dimensions.yaml"

TRACT_DATASET_KIND = "Tract"
NO_TRACT = "NoTract"

# Rucio metadata that asks the archive to back the Obs dataset up to tape.
BACKUP_KEY = "arcBackup"
BACKUP_VALUE = "SLAC_RAW_DISK_BKUP:need"

# Custom search attributes on every exposure workflow; day_obs is an Int so the UI can
# filter ranges of days.
SA_INSTRUMENT = SearchAttributeKey.for_keyword("instrument")
SA_DAY_OBS = SearchAttributeKey.for_int("day_obs")
SA_OBS_ID = SearchAttributeKey.for_keyword("obs_id")
SA_STEP = SearchAttributeKey.for_keyword("step")
# A raw file's state and size in the rawintegrity flow (models/rawintegrity.py); the size is a
# Double because the dev server's visibility store takes only three Int attributes.
SA_RAW_STATE = SearchAttributeKey.for_keyword("rawintegrity_state")
SA_RAW_BYTES = SearchAttributeKey.for_float("rawintegrity_bytes")
# A carousel request's status and its dataset's files: total and announced (models/carousel.py).
SA_CAROUSEL_STATUS = SearchAttributeKey.for_keyword("carousel_status")
SA_CAROUSEL_TOTAL = SearchAttributeKey.for_int("carousel_total_files")
SA_CAROUSEL_PROCESSED = SearchAttributeKey.for_int("carousel_processed_files")
# Name -> Temporal type, as the server registers them.
SEARCH_ATTRIBUTES = {
    SA_INSTRUMENT.name: "Keyword",
    SA_DAY_OBS.name: "Int",
    SA_OBS_ID.name: "Keyword",
    SA_STEP.name: "Keyword",
    SA_RAW_STATE.name: "Keyword",
    SA_RAW_BYTES.name: "Double",
    SA_CAROUSEL_STATUS.name: "Keyword",
    SA_CAROUSEL_TOTAL.name: "Int",
    SA_CAROUSEL_PROCESSED.name: "Int",
}


class InvalidName(UnsafeKey, ValueError):
    """An instrument, day_obs or obs_id that cannot be used safely as a name."""


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe name component, else raise InvalidName."""
    if not _NAME.match(value):
        raise InvalidName(
            f"{kind} {value!r} is not a valid name: use letters, digits, '_' and '-' "
            "(at most 128, not starting with '_' or '-')"
        )
    return value


def check_day_obs(day_obs: int | str) -> int:
    """Return day_obs as an int if it is a YYYYMMDD date of the calendar, else raise InvalidName.

    >>> check_day_obs(20240229)
    20240229
    >>> check_day_obs(20260230)
    Traceback (most recent call last):
    ...
    unembargo.models.names.InvalidName: day_obs 20260230 is not a date: day is out of range for month
    """
    text = str(day_obs)
    if not _DAY_OBS.match(text):
        raise InvalidName(f"day_obs {day_obs!r} is not a YYYYMMDD date")
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as err:
        raise InvalidName(f"day_obs {day_obs!r} is not a date: {err}") from None
    return int(text)


def workflow_id(instrument: str, obs_id: str) -> str:
    """Deterministic id: one workflow per exposure, ever."""
    return f"unembargo-{check_name('instrument', instrument)}-{check_name('obs_id', obs_id)}"


def exposure_prefix(s3_prefix: str, instrument: str, day_obs: int, obs_id: str) -> str:
    """S3 key prefix of an exposure folder in the embargo bucket (ends with '/')."""
    check_name("instrument", instrument)
    check_name("obs_id", obs_id)
    return f"{s3_prefix}{instrument}/{check_day_obs(day_obs)}/{obs_id}/"


def day_prefix(s3_prefix: str, instrument: str, day_obs: int) -> str:
    """S3 key prefix of one day of an instrument (ends with '/')."""
    return f"{s3_prefix}{check_name('instrument', instrument)}/{check_day_obs(day_obs)}/"


def expected_sensors_name(obs_id: str) -> str:
    """Name of the sidecar that lists the detectors an exposure must have."""
    return f"{obs_id}_expectedSensors.json"


def day_relpath(instrument: str, day_obs: int) -> str:
    """Folder of a day under the destination root (also the Rucio name prefix)."""
    return f"{check_name('instrument', instrument)}/{check_day_obs(day_obs)}"


def zip_relpath(instrument: str, day_obs: int, obs_id: str) -> str:
    """Zip path under the destination root; equal to the zip's Rucio name."""
    return f"{day_relpath(instrument, day_obs)}/{check_name('obs_id', obs_id)}{ZIP_SUFFIX}"


def yaml_relpath(instrument: str, day_obs: int, obs_id: str) -> str:
    """Dimension-record yaml path under the destination root; equal to its Rucio name."""
    return f"{day_relpath(instrument, day_obs)}/{check_name('obs_id', obs_id)}{YAML_SUFFIX}"


def day_file_pattern(instrument: str, day_obs: int) -> str:
    """Rucio name pattern listing every file (zip and yaml) of a day."""
    return f"{day_relpath(instrument, day_obs)}/*"


def parse_day_file(name: str) -> tuple[str, str] | None:
    """(obs_id, "zip" or "yaml") of a zip or yaml name (a path's last part), else None.

    >>> parse_day_file("LSSTCam/20251231/MC_O_20251231_000010_dimensions.yaml")
    ('MC_O_20251231_000010', 'yaml')
    >>> parse_day_file(".MC_O_20251231_000010.zip.0123abcd.partial") is None
    True
    """
    base = name.rpartition("/")[2]
    for kind, suffix in (("yaml", YAML_SUFFIX), ("zip", ZIP_SUFFIX)):
        obs_id = base.removesuffix(suffix)
        if obs_id != base and _NAME.match(obs_id):
            return obs_id, kind
    return None


def tract_dataset(instrument: str, day_obs: int, tract: int | None) -> str:
    """Rucio dataset of a day's files overlapping one tract (or none)."""
    kind = NO_TRACT if tract is None else f"{TRACT_DATASET_KIND}{int(tract)}"
    return f"Dataset/{check_name('instrument', instrument)}/raw/{kind}/{check_day_obs(day_obs)}"


def obs_dataset(instrument: str, day_obs: int, obs_id: str) -> str:
    """Rucio dataset holding one exposure's zip and yaml."""
    return (
        f"Dataset/{check_name('instrument', instrument)}/raw/Obs/"
        f"{check_day_obs(day_obs)}/{check_name('obs_id', obs_id)}"
    )


def exposure_datasets(instrument: str, day_obs: int, obs_id: str, tracts: Iterable[int]) -> list[str]:
    """Every dataset an exposure's zip and yaml belong in: one per tract (or NoTract), then Obs.

    >>> exposure_datasets("LSSTCam", 20251231, "MC_O_20251231_000010", [])
    ['Dataset/LSSTCam/raw/NoTract/20251231', 'Dataset/LSSTCam/raw/Obs/20251231/MC_O_20251231_000010']
    """
    kinds: list[int | None] = [*sorted(set(tracts))] or [None]
    day = [tract_dataset(instrument, day_obs, t) for t in kinds]
    return day + [obs_dataset(instrument, day_obs, obs_id)]


def obs_dataset_pattern(instrument: str, day_obs: int) -> str:
    """Rucio name pattern listing every Obs dataset of a day."""
    return f"Dataset/{check_name('instrument', instrument)}/raw/Obs/{check_day_obs(day_obs)}/*"


def parse_obs_dataset(name: str) -> tuple[str, int, str] | None:
    """(instrument, day_obs, obs_id) of an Obs dataset name, else None.

    >>> parse_obs_dataset("Dataset/LSSTCam/raw/Obs/20251231/MC_O_20251231_000010")
    ('LSSTCam', 20251231, 'MC_O_20251231_000010')
    >>> parse_obs_dataset("Dataset/LSSTCam/raw/Tract5/20251231") is None
    True
    """
    match = _OBS_DATASET.match(name)
    if not match or not (_NAME.match(match["inst"]) and _NAME.match(match["obs"])):
        return None
    return match["inst"], int(match["day"]), match["obs"]


def day_dataset_pattern(instrument: str, day_obs: int) -> str:
    """Rucio name pattern listing a day's Tract and NoTract datasets (not its Obs ones)."""
    return f"Dataset/{check_name('instrument', instrument)}/raw/*/{check_day_obs(day_obs)}"


def day_workflows_query(instrument: str, day_obs: int) -> str:
    """Temporal visibility query listing every exposure workflow of a day."""
    instrument, day_obs = check_name("instrument", instrument), check_day_obs(day_obs)
    return (
        f'WorkflowType = "{EXPOSURE_WORKFLOW}" AND {SA_INSTRUMENT.name} = "{instrument}" '
        f"AND {SA_DAY_OBS.name} = {day_obs}"
    )


def raw_runs_glob(instrument: str) -> str:
    """Butler RUN collections that hold an instrument's raws (``LSSTCam/raw/all``, ...);
    zips keep each dataset's run, so the main butler's raws are in the same runs."""
    return f"{check_name('instrument', instrument)}/raw/*"


def location_queue(location: str) -> str:
    """Task queue of a location: workers that reach its storage or service poll it."""
    return f"unembargo-loc-{check_name('location', location)}"


EXPOSURE_WORKFLOW = "UnembargoExposure"

# Runs that ``unembargo schedule`` starts: select due exposures, start their workflows.
SELECT_WORKFLOW = "UnembargoSelectAndStart"
SELECT_ACTIVITY = "select_and_start"


def schedule_id(instrument: str) -> str:
    """Id of the schedule that unembargoes an instrument's exposures as they come due."""
    return f"unembargo-schedule-{check_name('instrument', instrument)}"


def exposure_attributes(
    instrument: str, day_obs: int, obs_id: str, step: str | None = None
) -> dict[str, str | int]:
    """Span attributes and log fields of an exposure: the keys of its search attributes."""
    found: dict[str, str | int] = {
        SA_INSTRUMENT.name: instrument,
        SA_DAY_OBS.name: day_obs,
        SA_OBS_ID.name: obs_id,
    }
    if step is not None:
        found[SA_STEP.name] = step
    return found


def exposure_search_attributes(
    instrument: str, day_obs: int, obs_id: str, step: str
) -> TypedSearchAttributes:
    """The search attributes a workflow of an exposure starts with (any flow's)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(SA_INSTRUMENT, instrument),
            SearchAttributePair(SA_DAY_OBS, day_obs),
            SearchAttributePair(SA_OBS_ID, obs_id),
            SearchAttributePair(SA_STEP, step),
        ]
    )
