"""Building and checking an exposure's zip: member names, the raws' butler refs and where
they are (an S3 bucket or a disk), a bounded window of parallel reads written in order, and
the verification of a zip against the folder's listing. No Temporal here: activities/zip.py
drives it."""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from lsst.daf.butler import (
    Butler,
    DatasetRef,
    MissingDatasetTypeError,
    SerializedDatasetRefContainerV1,
)
from lsst.daf.butler.datastore.stored_file_info import StoredFileInfo
from lsst.daf.butler.datastores.file_datastore.retrieve_artifacts import (
    ArtifactIndexInfo,
    ZipIndex,
)
from lsst.resources import ResourcePath

from unembargo.adapters import destination
from unembargo.adapters.butler import RAW_TYPES, exposure_record
from unembargo.adapters.disk_source import read_disk_verified
from unembargo.adapters.headers import METADATA_INDEX, is_fits, raw_metadata
from unembargo.adapters.s3 import S3Client, S3Object, read_checked, read_verified
from unembargo.models.errors import (
    RERUN,
    SourceMismatch,
    UnsafeKey,
)
from unembargo.models.exposure import Exposure

BUTLER_INDEX = ZipIndex.index_name


INDEX_NAMES = (BUTLER_INDEX, METADATA_INDEX)


# Parallel downloads. A zip holds at most WINDOW objects and WINDOW_BYTES in memory
# at once (plus one larger object alone), whatever the exposure's size; all the zips
# of a worker process together hold at most PROCESS_BYTES (BUDGET), however many run.
WORKERS = 12


WINDOW = 2 * WORKERS


WINDOW_BYTES = 128 * 1024 * 1024


PROCESS_BYTES = 128 * 1024 * 1024


# Names quoted in an error message; the rest are counted.
SHOWN = 5


T = TypeVar("T")


@dataclass(frozen=True)
class Member:
    """One object of the folder and its name inside the zip."""

    name: str
    obj: S3Object
    # Artifact of a butler dataset: checked as FITS and indexed.
    raw: bool = False


@dataclass(frozen=True)
class Folder:
    """The listed folder: where it is and its members by name.

    In the bucket ``bucket`` under ``prefix``, or, with a disk ``root``, the directory
    ``root/prefix`` (its members keyed by their path relative to ``root``).
    """

    bucket: str
    prefix: str
    members: dict[str, S3Object]
    root: Path | None = None

    @property
    def url(self) -> str:
        if self.root is not None:
            return f"{(self.root / self.prefix).as_uri()}/"
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def where(self) -> str:
        """The embargo storage, for a message."""
        return "the embargo disk" if self.root is not None else "the embargo bucket"

    @property
    def storage(self) -> str:
        """The folder's storage, in a sentence about the folder."""
        return "the disk" if self.root is not None else "the bucket"

    def read(self, s3: S3Client, obj: S3Object) -> bytes:
        """One member's bytes, checked against its listing."""
        if self.root is not None:
            return read_disk_verified(self.root, obj)
        return read_verified(s3, self.bucket, obj)


def member_name(folder: Folder, key: str) -> str:
    """The zip member name of an object: its key relative to the folder, if safe."""
    name = key[len(folder.prefix) :] if key.startswith(folder.prefix) else None
    problem = _unsafe(name)
    if problem:
        raise UnsafeKey(
            f"object key {key!r} in {folder.url} cannot be a zip member ({problem}); nothing "
            f"was written. Rename or remove the object in {folder.where}, then "
            f"{RERUN}."
        )
    assert name is not None
    return name


def folder_members(folder: Folder, objects: list[S3Object]) -> dict[str, S3Object]:
    """The listed objects by member name; every unsafe key named in one UnsafeKey.

    A zero-byte object whose key is the folder itself (``.../<obs_id>/``, the "folder
    marker" S3 consoles create) is not a member and is skipped.
    """
    members: dict[str, S3Object] = {}
    unsafe: list[str] = []
    for obj in objects:
        if obj.key == folder.prefix and obj.size == 0:
            continue
        name = obj.key[len(folder.prefix) :] if obj.key.startswith(folder.prefix) else None
        problem = _unsafe(name)
        if problem:
            unsafe.append(f"{obj.key!r} ({problem})")
        else:
            assert name is not None
            members[name] = obj
    if unsafe:
        raise UnsafeKey(
            f"{len(unsafe)} object key{'s' if len(unsafe) != 1 else ''} in {folder.url} cannot be "
            f"zip members: {names_text(unsafe)}; nothing was written. Rename or remove "
            f"{'them' if len(unsafe) != 1 else 'it'} in {folder.where}, then {RERUN}."
        )
    return members


def _unsafe(name: str | None) -> str | None:
    """Why a relative name cannot be a member (it could escape or clash on extraction)."""
    if name is None:
        return "it is not under the exposure folder"
    if "\x00" in name or "\\" in name:
        return "it contains a NUL or a backslash"
    if name.startswith("/"):
        return "it starts with '/'"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "it has an empty, '.' or '..' path component"
    if name in INDEX_NAMES:
        return "it has the name of a zip index"
    return None


def raw_refs(butler: Butler, exp: Exposure) -> list[DatasetRef]:
    """Every raw (and guider raw) of the exposure in any RUN, with dimension records."""
    record = exposure_record(butler, exp)
    if record.day_obs != exp.day_obs:
        raise SourceMismatch(
            f"{exp.obs_id} is of day_obs {record.day_obs} in the embargo butler, not {exp.day_obs}; "
            "start it with the right day_obs."
        )
    data_id = {"instrument": exp.instrument, "exposure": exp.exposure_id}
    refs: dict[Any, DatasetRef] = {}
    for dataset_type in RAW_TYPES:
        try:
            butler.get_dataset_type(dataset_type)
        except MissingDatasetTypeError:
            continue
        for ref in butler.query_datasets(
            dataset_type,
            collections="*",
            find_first=False,
            data_id=data_id,
            with_dimension_records=True,
            explain=False,
        ):
            refs[ref.id] = ref
    return sorted(refs.values())


def artifacts_by_member(
    butler: Butler, refs: Iterable[DatasetRef], folder: Folder
) -> dict[str, ArtifactIndexInfo]:
    """Index entries of the datasets' files by member name; each file must be in the folder."""
    refs = list(refs)
    found: dict[str, ArtifactIndexInfo] = {}
    roots = butler.get_datastore_roots()
    # ingest_zip needs the datastore records (formatter, storage class, size). The
    # Butler has no public call returning them; Datastore.export_records is public.
    exported = butler._datastore.export_records(refs)
    for datastore_name, data in exported.items():
        root = roots.get(datastore_name)
        for dataset_id, by_table in data.records.items():
            for infos in by_table.values():
                for info in infos:
                    if not isinstance(info, StoredFileInfo):
                        raise TypeError(f"the embargo datastore {datastore_name} does not store files")
                    simple = info.to_simple()
                    name = _artifact_member(folder, simple.path, root, simple.file_size)
                    if name in found:
                        found[name].append(dataset_id)
                    else:
                        found[name] = ArtifactIndexInfo.from_single(simple, dataset_id)
    without = {ref.id for ref in refs} - {i for info in found.values() for i in info.ids}
    if without:
        raise SourceMismatch(
            f"{len(without)} raw datasets of {folder.url} have no file in the embargo "
            "datastore; repair the embargo butler before unembargoing this exposure."
        )
    return found


def _artifact_member(folder: Folder, path: str, root: ResourcePath | None, size: int) -> str:
    """Member name of a datastore file, which must be a listed object of the recorded size:
    an ``s3://`` URI in the folder's bucket, or a ``file://`` one under its disk root."""
    uri = artifact_uri(path, root)
    key = _folder_key(folder, uri)
    name = key[len(folder.prefix) :] if key is not None and key.startswith(folder.prefix) else None
    obj = folder.members.get(name) if name else None
    storage = "a file" if folder.root is not None else "an object"
    if obj is None:
        raise SourceMismatch(
            f"the embargo butler has a raw at {uri}, which is not {storage} of {folder.url}; "
            f"{folder.storage} and the butler disagree, repair one of them."
        )
    if size >= 0 and obj.size != size:
        raise SourceMismatch(
            f"{uri} is {obj.size} bytes in {folder.storage} but {size} bytes in the embargo butler "
            "(truncated or replaced?); re-send and re-ingest it."
        )
    assert name is not None
    return name


def artifact_uri(path: str, root: ResourcePath | None) -> ResourcePath:
    """Where a datastore record's file is: its path under the datastore root, or absolute."""
    return root.join(path) if root is not None else ResourcePath(path)


def _folder_key(folder: Folder, uri: ResourcePath) -> str | None:
    """The listing key ``uri`` would have in ``folder``'s storage, or None if it is elsewhere."""
    if folder.root is None:
        return uri.relativeToPathRoot if uri.scheme == "s3" and uri.netloc == folder.bucket else None
    if uri.scheme != "file":
        return None
    try:
        return Path(uri.ospath).relative_to(folder.root).as_posix()
    except ValueError:
        return None


def artifact_uris(butler: Butler, refs: Iterable[DatasetRef]) -> list[ResourcePath]:
    """Every file the embargo datastore records for ``refs``."""
    roots = butler.get_datastore_roots()
    uris = []
    for datastore_name, data in butler._datastore.export_records(list(refs)).items():
        for by_table in data.records.values():
            for infos in by_table.values():
                for info in infos:
                    if isinstance(info, StoredFileInfo):
                        uris.append(artifact_uri(info.path, roots.get(datastore_name)))
    return uris


def disk_folder_of(uris: list[ResourcePath], exp: Exposure, s3_bucket: str) -> tuple[Path, str] | None:
    """Where the raws of ``exp`` are, from their URIs: None if in S3 (or there are none),
    else the disk root and the folder ``<instrument>/<day_obs>/<obs_id>/`` under it holding
    every one. A raw elsewhere, or raws of one exposure on both, is SourceMismatch."""
    schemes = {uri.scheme for uri in uris}
    if not uris or schemes == {"s3"}:
        return None
    if schemes != {"file"}:
        raise SourceMismatch(
            f"the embargo butler has the raws of {exp.obs_id} on {' and '.join(sorted(schemes))}: "
            f"an exposure is read from one storage (s3 or file), so it cannot be zipped as it is; "
            f"move its raws to one of them (e.g. s3://{s3_bucket}/...) and re-ingest them."
        )
    tail = (exp.instrument, str(exp.day_obs), exp.obs_id)
    folders = set()
    for uri in uris:
        parts = Path(uri.ospath).parts
        at = next((i for i in range(len(parts) - 4, 0, -1) if parts[i : i + 3] == tail), None)
        if at is None:
            raise SourceMismatch(
                f"the embargo butler has a raw of {exp.obs_id} at {uri}, which is not in a "
                f"{'/'.join(tail)}/ folder on disk; the folder's other files (expectedSensors, "
                "sidecars) cannot be found beside it. Move it there and re-ingest it."
            )
        folders.add(Path(*parts[:at]))
    if len(folders) != 1:
        raise SourceMismatch(
            f"the raws of {exp.obs_id} are in {len(folders)} folders on disk "
            f"({names_text(sorted(str(f) for f in folders))}); an exposure is one folder. Move them "
            "into one and re-ingest them."
        )
    return folders.pop(), "/".join(tail) + "/"


def zip_index(refs: list[DatasetRef], raws: Mapping[str, ArtifactIndexInfo]) -> ZipIndex:
    """The index ``Butler.ingest_zip`` reads: refs with dimension records, files by member."""
    return ZipIndex(
        refs=SerializedDatasetRefContainerV1.from_refs(refs),
        artifact_map={name: raws[name] for name in sorted(raws)},
    )


def parse_expected_sensors(name: str, data: bytes) -> set[str]:
    """Detector names an expectedSensors file lists (its ``expectedSensors`` keys)."""
    try:
        sensors = json.loads(data)["expectedSensors"]
    except (ValueError, KeyError, TypeError):
        sensors = None
    if not isinstance(sensors, dict | list) or not all(isinstance(s, str) for s in sensors):
        raise SourceMismatch(
            f"{name} is not an expectedSensors file (JSON with an 'expectedSensors' mapping "
            "of detector names); fix or re-send it."
        )
    return set(sensors)


def detector_name(ref: DatasetRef) -> str:
    """Full name (e.g. R22_S11) of a ref's detector, as expectedSensors names it."""
    record = ref.dataId.records["detector"]
    assert record is not None, "refs are queried with their dimension records"
    return str(record.full_name)


@dataclass(frozen=True)
class ZipCheck:
    """An existing zip compared with the folder's listing."""

    differences: list[str]
    members: int
    raws: int
    # Whom the zip's butler index names instead, when it lists none of this exposure.
    foreign: str = ""


def _index_differences(index: ZipIndex, exp: Exposure) -> list[str]:
    """The butler index must list only datasets of this exposure."""
    found = {
        (ref.data_id.get("instrument"), ref.data_id.get("exposure"))
        for ref in index.refs.compact_refs.values()
    }
    others = sorted(found - {(exp.instrument, exp.exposure_id)}, key=str)
    return [f"its butler index lists datasets of {inst} exposure {eid}" for inst, eid in others]


def _owners(index: ZipIndex) -> str:
    """The exposures a butler index lists, for a message."""
    found = {
        (str(ref.data_id.get("instrument")), str(ref.data_id.get("exposure")))
        for ref in index.refs.compact_refs.values()
    }
    return ", ".join(f"{inst} exposure {eid}" for inst, eid in sorted(found))


def _lists_exposure(index: ZipIndex, exp: Exposure) -> bool:
    """Whether the butler index lists any dataset of ``exp``."""
    return any(
        (ref.data_id.get("instrument"), ref.data_id.get("exposure")) == (exp.instrument, exp.exposure_id)
        for ref in index.refs.compact_refs.values()
    )


def _name_differences(names_in_zip: list[str], expected: Mapping[str, S3Object]) -> list[str]:
    present = set(names_in_zip)
    out = [f"{n} missing from the zip" for n in sorted(set(expected) - present)]
    if expected:
        out += [f"{n} not in the bucket" for n in sorted(present - set(expected) - set(INDEX_NAMES))]
    if len(present) != len(names_in_zip):
        out.append("duplicate member names")
    return out


def _member_differences(zf: zipfile.ZipFile, info: zipfile.ZipInfo, obj: S3Object | None) -> list[str]:
    md5 = hashlib.md5(usedforsecurity=False)
    with zf.open(info) as member:
        while chunk := member.read(destination.CHUNK):
            md5.update(chunk)
    if obj is None:
        return []
    if info.file_size != obj.size:
        return [f"{info.filename} is {info.file_size} bytes, the bucket's {obj.size}"]
    if obj.md5 is not None and md5.hexdigest() != obj.md5:
        return [f"{info.filename} md5 differs from the bucket's ETag"]
    return []


class WriteBehind:
    """A file whose writes happen in a side thread, and each of ``also`` (the zip's md5)
    is fed the same bytes in a thread of its own, so the checksums Rucio needs (the
    slowest part of the zip) run beside the thread that frames the members and beside
    each other. At most QUEUED chunks wait per thread; ``flush`` waits for all and
    raises the first error. Not seekable, so ``zipfile`` streams through it."""

    QUEUED = 4

    def __init__(self, raw: destination.Sink, *also: Callable[[bytes], object]) -> None:
        self._raw = raw
        self.size = 0
        self._error: BaseException | None = None
        self._queues: list[queue.Queue[bytes | None]] = []
        self._threads: list[threading.Thread] = []
        for i, consume in enumerate((raw.write, *also)):
            q: queue.Queue[bytes | None] = queue.Queue(maxsize=self.QUEUED)
            name = "zip-write" if i == 0 else f"zip-sum-{i}"
            thread = threading.Thread(target=self._run, args=(q, consume), name=name, daemon=True)
            self._queues.append(q)
            self._threads.append(thread)
            thread.start()

    def _run(self, q: queue.Queue[bytes | None], consume: Callable[[bytes], object]) -> None:
        while (data := q.get()) is not None:
            if self._error is None:
                try:
                    consume(data)
                except BaseException as err:  # noqa: BLE001 - handed to the writing thread
                    self._error = err
            q.task_done()
        q.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data: bytes) -> int:
        self._raise()
        chunk = bytes(data)
        for q in self._queues:
            q.put(chunk)
        self.size += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.size

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        """Nothing to do: whoever opened the wrapped file closes it."""

    def flush(self) -> None:
        for q in self._queues:
            q.join()
        self._raise()
        self._raw.flush()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join()


class ByteBudget:
    """Bytes of downloaded objects that the zips of one process may hold at once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._cond = threading.Condition()

    def cost(self, size: int) -> int:
        """What an object takes from the budget: an object larger than all of it takes all of it."""
        return min(size, self.total)

    def take(self, amount: int, wait: bool) -> bool:
        """Take ``amount``; without ``wait``, False at once if it is not free."""
        with self._cond:
            if wait:
                self._cond.wait_for(lambda: self.free >= amount)
            elif self.free < amount:
                return False
            self.free -= amount
            return True

    def give(self, amount: int) -> None:
        with self._cond:
            self.free += amount
            self._cond.notify_all()


BUDGET = ByteBudget(PROCESS_BYTES)


def in_order(
    fetch: Callable[[Member], T],
    members: list[Member],
    workers: int = WORKERS,
    window: int = WINDOW,
    window_bytes: int = WINDOW_BYTES,
    budget: ByteBudget = BUDGET,
) -> Generator[tuple[Member, T], None, None]:
    """``fetch`` each member in parallel, yielding results in the members' order.

    A bounded window of downloads runs ahead of the one being written, so memory
    stays bounded however many members there are; a member's bytes count against
    ``budget`` from its download until it is written. Only a zip holding nothing
    waits for the budget (others go on writing what they hold), so zips sharing it
    never wait on each other in a circle. Closing the iterator (or an error) cancels
    what has not started and waits for what has.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zip-fetch")
    pending: deque[tuple[Member, Future[T]]] = deque()
    in_flight = 0
    held = 0
    todo = iter(members)
    upcoming = next(todo, None)
    try:
        while upcoming is not None or pending:
            while upcoming is not None and (
                not pending or (len(pending) < window and in_flight + upcoming.obj.size <= window_bytes)
            ):
                if not budget.take(budget.cost(upcoming.obj.size), wait=not pending):
                    break
                held += budget.cost(upcoming.obj.size)
                pending.append((upcoming, pool.submit(fetch, upcoming)))
                in_flight += upcoming.obj.size
                upcoming = next(todo, None)
            member, future = pending.popleft()
            in_flight -= member.obj.size
            yield member, future.result()
            held -= budget.cost(member.obj.size)
            budget.give(budget.cost(member.obj.size))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        budget.give(held)


@dataclass(frozen=True)
class Fetched:
    """One member's verified bytes, their CRC-32 where S3's own CRC32 of the object
    vouched for them (the zip's CRC is then S3's, not computed again), and for a raw
    its checked header metadata."""

    data: bytes
    crc32: int | None
    header: dict[str, Any] | None


def fetch_member(s3: S3Client, folder: Folder, member: Member) -> Fetched:
    """One object read and checked against its listing (in a download thread)."""
    if folder.root is not None:
        data, crc = read_disk_verified(folder.root, member.obj), None
    else:
        data, crc = read_checked(s3, folder.bucket, member.obj)
    return Fetched(data, crc, raw_metadata(member.name, data) if member.raw else None)


def add_member(zf: zipfile.ZipFile, name: str, data: bytes, when: datetime, crc32: int | None = None) -> None:
    """Write one member: FITS stored (raws are already compressed or incompressible noise,
    and the butler reads them in place), anything else (sidecars, indexes) DEFLATEd, as
    the cron tool's zips have them. A stored member whose CRC-32 is known is written
    with it, without a second pass over its bytes."""
    t = when.astimezone(UTC)
    info = zipfile.ZipInfo(name, date_time=(max(t.year, 1980), t.month, t.day, t.hour, t.minute, t.second))
    info.compress_type = zipfile.ZIP_STORED if is_fits(name) else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    if crc32 is not None and info.compress_type == zipfile.ZIP_STORED:
        _add_stored(zf, info, data, crc32)
    else:
        zf.writestr(info, data)


def _add_stored(zf: zipfile.ZipFile, info: zipfile.ZipInfo, data: bytes, crc32: int) -> None:
    """``zf.writestr`` of a stored member with its CRC-32 given: the local header with
    the sizes and CRC (no data descriptor), the bytes, and the entry the central
    directory is written from, as ``zipfile`` itself does for a member it writes."""
    info.file_size = info.compress_size = len(data)
    info.CRC = crc32
    info.flag_bits = 0
    with zf._lock:  # type: ignore[attr-defined]
        if zf._writing:  # type: ignore[attr-defined]
            raise ValueError("can't write to the zip while another member is open for writing")
        zf._writecheck(info)  # type: ignore[attr-defined]
        zf._didModify = True  # type: ignore[attr-defined]
        fp = zf.fp
        assert fp is not None
        info.header_offset = fp.tell()
        fp.write(info.FileHeader(None))
        fp.write(data)
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
        zf.start_dir = fp.tell()


def names_text(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown if len(items) <= SHOWN else f"{shown} and {len(items) - SHOWN} more"


def differences_text(differences: list[str]) -> str:
    count = len(differences)
    return f"{count} difference{'s' if count != 1 else ''}: {names_text(differences)}"


def _quiet(detail: str) -> None:
    """Progress nobody listens to."""


def verify_zip(
    path: Path, expected: Mapping[str, S3Object], exp: Exposure, beat: Callable[[str], None] = _quiet
) -> ZipCheck:
    """Compare an existing zip with the listing: names, sizes, md5s, both indexes.

    Reading every member also checks the zip's own CRCs, and its butler index
    must describe this exposure. With an empty listing (the embargo copy is gone)
    only that and the zip's own consistency can be checked. ``beat`` hears of progress.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            return _verify_open(zf, expected, exp, beat)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        return ZipCheck([f"not a readable zip ({err.__class__.__name__})"], 0, 0)


def _verify_open(
    zf: zipfile.ZipFile, expected: Mapping[str, S3Object], exp: Exposure, beat: Callable[[str], None]
) -> ZipCheck:
    infos = zf.infolist()
    by_name = {info.filename: info for info in infos}
    missing_indexes = [f"{name} missing" for name in INDEX_NAMES if name not in by_name]
    if missing_indexes:
        return ZipCheck(missing_indexes, len(infos), 0)
    index = ZipIndex.from_open_zip(zf)
    # A zip of another exposure: say that alone, not every member that differs.
    others = _index_differences(index, exp)
    if others and not _lists_exposure(index, exp):
        return ZipCheck(others, len(infos), len(index.refs), foreign=_owners(index))
    differences = _name_differences([info.filename for info in infos], expected)
    for done, (name, info) in enumerate(sorted(by_name.items()), start=1):
        if name not in INDEX_NAMES:
            differences += _member_differences(zf, info, expected.get(name))
            beat(f"{done}/{len(infos)} members of the existing zip verified")
    differences += [f"{name} indexed but absent" for name in index.artifact_map if name not in by_name]
    differences += _index_differences(index, exp)
    json.loads(zf.read(METADATA_INDEX))
    return ZipCheck(differences, len(infos), len(index.refs))
