"""Rucio as an external system: what a file or dataset holds there, batched writes, and a day's
catalogue for reconcile. No Temporal here: the activities in activities/rucio.py call these.

Reading back matters: ``add_replicas`` of an existing file answers OK but keeps the old size
and checksums, so every write is followed by a read that compares."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rucio.common.exception import (
    DataIdentifierAlreadyExists,
    DataIdentifierNotFound,
    UnsupportedOperation,
)

from unembargo.models import names
from unembargo.models.errors import RERUN, DestinationConflict, ReplicaConflict
from unembargo.models.exposure import (
    Exposure,
    FileReceipt,
)
from unembargo.models.reconcile import ObsDataset, RucioDay, RucioFile

if TYPE_CHECKING:
    from rucio.client import Client


BACKUP_TAG = f"{names.BACKUP_KEY}={names.BACKUP_VALUE}"


AVAILABLE = "AVAILABLE"


# The server's schema takes at most this many DIDs in one bulk call (maxItems).
BULK_DIDS = 1000


@dataclass(frozen=True)
class Wanted:
    """A file to register: its DID name (equal to its relative path), receipt and path."""

    name: str
    receipt: FileReceipt
    path: Path


@dataclass(frozen=True)
class Held:
    """What Rucio holds about one file, as list_replicas reports it."""

    bytes: int | None
    adler32: str | None
    md5: str | None
    # Replica state on our RSE; None when the file has no replica there.
    state: str | None
    # Local paths of the file's PFNs on our RSE.
    paths: frozenset[Path]
    # Names of the datasets in our scope the file is attached to.
    parents: frozenset[str]


@dataclass(frozen=True)
class Todo:
    """What the register step still has to write."""

    replicas: list[Wanted]
    # Dataset name -> names of the files it still lacks.
    attachments: dict[str, list[str]]

    @property
    def empty(self) -> bool:
        return not self.replicas and not self.attachments

    def describe(self) -> str:
        parts = [f"replica of {w.name}" for w in self.replicas]
        parts += [f"{d} <- {', '.join(files)}" for d, files in self.attachments.items()]
        return "; ".join(parts)


@dataclass(frozen=True)
class TagState:
    """The Obs dataset as the tag step sees it."""

    open: bool
    # The backup key's value; None when unset.
    value: Any

    @property
    def done(self) -> bool:
        return not self.open and self.value == names.BACKUP_VALUE


def register_datasets(exposure: Exposure, tracts: Iterable[int]) -> list[str]:
    """Every dataset the exposure's files belong in: one per tract (or NoTract), then Obs."""
    return names.exposure_datasets(exposure.instrument, exposure.day_obs, exposure.obs_id, tracts)


def exposure_files(exposure: Exposure) -> list[str]:
    """DID names of the zip and the yaml: identity naming, so also their relative paths."""
    key = (exposure.instrument, exposure.day_obs, exposure.obs_id)
    return [names.zip_relpath(*key), names.yaml_relpath(*key)]


def held_files(client: Client, scope: str, rse: str, files: list[str]) -> dict[str, Held]:
    """One list_replicas call: sizes, checksums, our RSE's PFNs and state, parent datasets.

    Files Rucio does not know (or that have no replica anywhere) are absent.
    """
    entries = client.list_replicas(
        [{"scope": scope, "name": name} for name in files],
        schemes=["file"],
        all_states=True,
        resolve_parents=True,
    )
    return {e["name"]: _held(e, scope, rse) for e in entries if e["scope"] == scope}


def _held(entry: dict[str, Any], scope: str, rse: str) -> Held:
    prefix = f"{scope}:"
    return Held(
        bytes=entry.get("bytes"),
        adler32=entry.get("adler32"),
        md5=entry.get("md5"),
        state=(entry.get("states") or {}).get(rse),
        paths=frozenset(Path(urlsplit(p).path) for p in (entry.get("rses") or {}).get(rse, [])),
        parents=frozenset(p.removeprefix(prefix) for p in entry.get("parents", []) if p.startswith(prefix)),
    )


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def conflicts(wanted: list[Wanted], held: dict[str, Held], scope: str, rse: str) -> list[str]:
    """What Rucio holds that contradicts the files on disk (empty when nothing does)."""
    found = []
    for w in wanted:
        h = held.get(w.name)
        if h is None:
            continue
        r = w.receipt
        if (h.bytes, _lower(h.adler32), _lower(h.md5)) != (r.size, r.adler32.lower(), r.md5.lower()):
            found.append(
                f"{scope}:{w.name} is registered with bytes={h.bytes} adler32={h.adler32} "
                f"md5={h.md5}, but the file has bytes={r.size} adler32={r.adler32} md5={r.md5}"
            )
        if h.state is not None and h.state != AVAILABLE:
            found.append(f"the replica of {scope}:{w.name} on {rse} is {h.state}, not {AVAILABLE}")
        if h.state is not None and w.path not in h.paths:
            found.append(
                f"the replica of {scope}:{w.name} on {rse} points at "
                f"{sorted(map(str, h.paths))}, not at {w.path}: check the RSE's file "
                "protocol prefix and lfn2pfn_algorithm=identity"
            )
    return found


def todo(wanted: list[Wanted], held: dict[str, Held], datasets: list[str]) -> Todo:
    """Replicas and attachments that are missing; the check of "done when"."""
    replicas = [w for w in wanted if w.name not in held or held[w.name].state is None]
    attachments = {}
    for dataset in datasets:
        lacking = [w.name for w in wanted if w.name not in held or dataset not in held[w.name].parents]
        if lacking:
            attachments[dataset] = lacking
    return Todo(replicas, attachments)


def check_on_disk(dest_root: Path, wanted: list[Wanted]) -> None:
    """Refuse to register files that are not at the destination with the receipt's size."""
    if not dest_root.is_dir():
        # An unmounted disk comes back: an ordinary (retried) error, not bad input.
        raise FileNotFoundError(f"destination root {dest_root} is not there (not mounted?)")
    for w in wanted:
        try:
            size = w.path.stat().st_size
        except FileNotFoundError:
            raise DestinationConflict(
                f"{w.path} is missing, but its receipt says it was written ({w.receipt.size} "
                "bytes); not registering it: restore the file or redo the zip/export step"
            ) from None
        if size != w.receipt.size:
            raise DestinationConflict(
                f"{w.path} has {size} bytes, its receipt says {w.receipt.size}; not registering "
                "it: find out which is right before registering anything"
            )


def replica_spec(scope: str, w: Wanted) -> dict[str, Any]:
    """add_replicas entry; no PFN, the deterministic RSE derives it (identity naming)."""
    r = w.receipt
    return {"scope": scope, "name": w.name, "bytes": r.size, "adler32": r.adler32, "md5": r.md5}


def attachment_specs(scope: str, attachments: dict[str, list[str]]) -> list[dict[str, Any]]:
    """add_files_to_datasets entries: each dataset with the files it lacks."""
    return [
        {"scope": scope, "name": dataset, "dids": [{"scope": scope, "name": f} for f in files]}
        for dataset, files in attachments.items()
    ]


def require_open_dataset(did: dict[str, Any], lacking: list[str]) -> None:
    """A dataset that must still take files: a DATASET, and open."""
    did_name = f"{did['scope']}:{did['name']}"
    if did["type"] != "DATASET":
        raise ReplicaConflict(f"{did_name} is a {did['type']}, expected a dataset; nothing was changed")
    if not did["open"]:
        raise ReplicaConflict(
            f"dataset {did_name} is closed but lacks {', '.join(lacking)}: Rucio refuses to "
            "attach to a closed dataset, and nothing was changed. If it should hold these files, "
            f"reopen it (set_status open=True, needs an admin account), then {RERUN}"
        )


def add_dataset(client: Client, scope: str, name: str) -> None:
    """Create a dataset; one that a concurrent creator made first is just as good."""
    try:
        client.add_dataset(scope, name)
    except DataIdentifierAlreadyExists:
        pass


def tag_state(client: Client, scope: str, name: str) -> TagState:
    """Open flag and backup value of the Obs dataset; conflicts for anything unexpected."""
    try:
        did = client.get_did(scope, name)
    except DataIdentifierNotFound:
        raise ReplicaConflict(
            f"Obs dataset {scope}:{name} does not exist: the register step has not run for this "
            f"exposure. Nothing was changed; {RERUN} (it registers first)"
        ) from None
    if did["type"] != "DATASET":
        raise ReplicaConflict(f"{scope}:{name} is a {did['type']}, expected a dataset")
    value = client.get_metadata(scope, name, plugin="JSON").get(names.BACKUP_KEY)
    if value is not None and value != names.BACKUP_VALUE:
        raise ReplicaConflict(
            f"Obs dataset {scope}:{name} has {names.BACKUP_KEY}={value!r}, expected "
            f"{names.BACKUP_VALUE!r}; left as it is (someone else set it): check with the archive"
        )
    return TagState(open=bool(did["open"]), value=value)


def require_registered(client: Client, scope: str, name: str, files: list[str]) -> None:
    """Refuse to close or tag an Obs dataset that lacks the zip or the yaml."""
    held = {c["name"] for c in client.list_content(scope, name) if c["scope"] == scope}
    lacking = [f for f in files if f not in held]
    if lacking:
        raise ReplicaConflict(
            f"Obs dataset {scope}:{name} lacks {', '.join(lacking)}: the register step has not "
            "finished. Not closing or tagging it (a closed dataset cannot take the missing files); "
            "run register first"
        )


def close_dataset(client: Client, scope: str, name: str) -> None:
    """Close a dataset; a concurrent attempt that closed it first is just as good."""
    try:
        client.close(scope, name)
    except UnsupportedOperation:
        if client.get_did(scope, name)["open"]:
            raise


def day_catalog(client: Client, scope: str, instrument: str, day_obs: int) -> RucioDay:
    """What Rucio holds of a day, in a handful of bulk calls whatever the number of exposures.

    Three name-pattern listings (Obs datasets, Tract/NoTract datasets, files), then
    bulk metadata of the files (bytes, checksums, availability) and of the Obs
    datasets (open, backup tag), and one bulk listing of every dataset's content.
    Replica PFNs and states are not read: ``list_replicas`` costs about 5 ms per
    file on the server, and the register step checks them when it runs.
    """
    obs_names = [
        n for n in _names(client, scope, names.obs_dataset_pattern(instrument, day_obs), "dataset")
        if _obs_id(n, instrument, day_obs)
    ]  # fmt: skip
    day_sets = [
        n for n in _names(client, scope, names.day_dataset_pattern(instrument, day_obs), "dataset")
        if names.parse_obs_dataset(n) is None
    ]  # fmt: skip
    files = [
        n for n in _names(client, scope, names.day_file_pattern(instrument, day_obs), "file")
        if names.parse_day_file(n)
    ]  # fmt: skip
    parents = dataset_contents(client, scope, obs_names + day_sets)
    return RucioDay(
        files={
            m["name"]: _file(m, parents.get(m["name"], set()))
            for m in _metadata(client, scope, files, "DID_COLUMN")
        },
        obs={
            obs_id: ObsDataset(open=bool(m.get("is_open")), backup=m.get(names.BACKUP_KEY))
            for m in _metadata(client, scope, obs_names, "ALL")
            if (obs_id := _obs_id(m["name"], instrument, day_obs))
        },
    )


def _names(client: Client, scope: str, pattern: str, did_type: str) -> list[str]:
    return list(client.list_dids(scope, [{"name": pattern}], did_type=did_type))


def _obs_id(name: str, instrument: str, day_obs: int) -> str | None:
    parsed = names.parse_obs_dataset(name)
    return parsed[2] if parsed and parsed[:2] == (instrument, day_obs) else None


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), BULK_DIDS):
        yield items[start : start + BULK_DIDS]


def _metadata(client: Client, scope: str, dids: list[str], plugin: str) -> Iterable[dict[str, Any]]:
    """Metadata of many DIDs, ``BULK_DIDS`` per call."""
    for chunk in _chunks(dids):
        yield from client.get_metadata_bulk([{"scope": scope, "name": n} for n in chunk], plugin=plugin)


def dataset_contents(client: Client, scope: str, datasets: list[str]) -> dict[str, set[str]]:
    """File name -> the datasets among ``datasets`` it is attached to (one bulk listing)."""
    parents: dict[str, set[str]] = {}
    for chunk in _chunks(datasets):
        for entry in client.bulk_list_files([{"scope": scope, "name": n} for n in chunk]):
            if entry["scope"] == scope and entry.get("parent_scope") == scope:
                parents.setdefault(entry["name"], set()).add(entry["parent_name"])
    return parents


def _file(meta: dict[str, Any], parents: set[str]) -> RucioFile:
    return RucioFile(
        bytes=meta.get("bytes"),
        adler32=meta.get("adler32"),
        md5=meta.get("md5"),
        available=meta.get("availability") == AVAILABLE,
        parents=frozenset(parents),
    )
