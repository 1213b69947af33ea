"""A Rucio transfertool for the local stack that really copies: the stand-in for FTS3.

Runs inside the Rucio server venv, in the conveyor daemons that ``rucio_conveyor.py`` starts
(only the stdlib and rucio here: that venv cannot import the app). Rucio's submitter hands it
each transfer with the source and destination PFNs; both RSEs use the posix ``file`` protocol,
so a PFN's path is the file. ``submit`` copies the source to a hidden temporary name in the
destination directory while computing its adler32, and only when the size and adler32 match
Rucio's metadata renames it into place (``os.replace``): a half-copied or corrupted file is
never visible at the destination. The outcome of every transfer of a job is written to
``<records>/<job id>.json`` (``[conveyor] stackcopy_records``), and ``bulk_query`` (the
poller) answers from it: DONE, or FAILED with the reason (source missing, size or adler32
mismatch). Rucio's finisher then marks the replica AVAILABLE and its locks OK, or retries the
request and in the end makes its locks STUCK, as it does with FTS3's answers.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from rucio.common.config import config_get
from rucio.db.sqla.constants import RequestState
from rucio.transfertool.transfertool import TransferStatusReport, Transfertool, TransferToolBuilder

NAME = "stackcopy"
# Where the records of the jobs submitted are kept: a folder of the stack's Rucio state.
RECORDS_OPTION = "stackcopy_records"
CHUNK = 1 << 20


def records_dir() -> Path:
    """The folder of the job records, from ``[conveyor] stackcopy_records``."""
    return Path(config_get("conveyor", RECORDS_OPTION))


def pfn_path(pfn: str) -> Path:
    """The local path of a ``file://`` PFN."""
    parts = urlsplit(pfn)
    if parts.scheme != "file":
        raise ValueError(f"not a file PFN: {pfn}")
    return Path(unquote(parts.path))


def same_adler32(a: str, b: str) -> bool:
    """Adler32 hex strings compared as numbers (Rucio may keep them without leading zeros)."""
    return int(a, 16) == int(b, 16)


def copy_verified(source: Path, dest: Path, adler32: str, size: int | None) -> str | None:
    """Copy ``source`` to ``dest`` if its bytes have Rucio's size and adler32: None, else why not."""
    if not source.is_file():
        return f"source file missing: {source}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        checksum, copied = 1, 0
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(CHUNK):
                checksum = zlib.adler32(chunk, checksum)
                copied += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = f"{checksum:08x}"
        if size is not None and copied != size:
            return f"size mismatch: {source} has {copied} bytes, Rucio has {size}"
        if not same_adler32(got, adler32):
            return f"adler32 mismatch: {source} has {got}, Rucio has {adler32}"
        os.replace(tmp, dest)
        tmp = ""
        return None
    except OSError as err:
        return f"copy of {source} to {dest} failed: {err}"
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a job's record whole (temporary name, then rename): a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


class CopyStatusReport(TransferStatusReport):
    """One transfer's outcome as the poller applies it to its request."""

    supported_db_fields = ["state", "external_id", "err_msg", "transferred_at"]

    def __init__(self, request_id: str, external_id: str, outcome: dict[str, Any]) -> None:
        super().__init__(request_id)
        self.external_id = external_id
        self.state = RequestState.DONE if outcome.get("state") == "DONE" else RequestState.FAILED
        self.err_msg = outcome.get("reason")
        at = outcome.get("at")
        self.transferred_at = datetime.datetime.fromisoformat(at) if at else None

    def initialize(self, session: Any, logger: Any = logging.log) -> None:
        pass

    def get_monitor_msg_fields(self, session: Any, logger: Any = logging.log) -> dict[str, Any]:
        return {"reason": self.err_msg or ""}


class CopyTransfertool(Transfertool):
    """Copies each file of a job at submit, checks it against Rucio, and reports from its record."""

    external_name = NAME
    required_rse_attrs = ()
    supported_schemes = {"file"}

    def __init__(self, external_host: str, logger: Any = logging.log) -> None:
        super().__init__(external_host, logger)

    @classmethod
    def submission_builder_for_path(
        cls, transfer_path: list[Any], logger: Any = logging.log
    ) -> tuple[list[Any], Any]:
        if not all(urlsplit(hop.dest_url).scheme == "file" for hop in transfer_path):
            return [], None
        return transfer_path, TransferToolBuilder(cls, external_host=NAME)

    def group_into_submit_jobs(self, transfer_paths: Any) -> list[dict[str, Any]]:
        # One job per path: a multihop path's hops are copied in order within its job.
        return [{"transfers": list(path), "job_params": {}} for path in transfer_paths]

    def submit(self, transfers: Any, job_params: dict[str, str], timeout: int | None = None) -> str:
        job = uuid.uuid4().hex
        record: dict[str, Any] = {}
        failed = False
        for transfer in transfers:
            rws = transfer.rws
            source = transfer.source_url(transfer.src)
            dest = transfer.dest_url
            if failed:
                reason: str | None = "an earlier hop of the job failed"
            else:
                reason = copy_verified(pfn_path(source), pfn_path(dest), rws.adler32, rws.byte_count)
            failed = failed or reason is not None
            record[rws.request_id] = {
                "state": "FAILED" if reason else "DONE",
                "reason": reason,
                "source": source,
                "dest": dest,
                "at": datetime.datetime.now(datetime.UTC).replace(tzinfo=None).isoformat(),
            }
            level = logging.WARNING if reason else logging.INFO
            self.logger(level, "stackcopy %s: %s -> %s: %s", rws.request_id, source, dest, reason or "DONE")
        write_record(records_dir() / f"{job}.json", record)
        return job

    def bulk_query(self, requests_by_eid: Any, timeout: int | None = None) -> dict[str, dict[str, Any]]:
        response: dict[str, dict[str, Any]] = {}
        for job, requests in requests_by_eid.items():
            try:
                record = json.loads((records_dir() / f"{job}.json").read_text())
            except (OSError, ValueError):
                record = {}
            for request_id in requests:
                outcome = record.get(request_id, {"state": "FAILED", "reason": f"no record of job {job}"})
                response.setdefault(job, {})[request_id] = CopyStatusReport(request_id, job, outcome)
        return response

    def cancel(self, transfer_ids: Any, timeout: int | None = None) -> bool:
        return True  # every copy ended within its submit

    def update_priority(self, transfer_id: str, priority: int, timeout: int | None = None) -> bool:
        return True
