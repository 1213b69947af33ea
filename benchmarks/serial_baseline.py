"""The cron loop unembargo replaces, as a baseline: the same five steps with the same
libraries, one exposure after another, in one process.

    .venv/bin/python benchmarks/serial_baseline.py EXPOSURES.json > RESULTS.json

``EXPOSURES.json`` is a list of ``{"instrument", "day_obs", "obs_id", "exposure_id"}``;
the settings come from the ``UNEMBARGO_*`` environment, as for a worker.
``benchmarks/pipeline.py`` runs it as a child process (so its peak RSS is its own).

Per exposure, as the current tool does it: skip if the zip exists; the raws (and
guider raws) with their dimension records; skip if fewer than expectedSensors lists;
``retrieve_artifacts_zip`` into a temporary directory on the destination disk, plus
``_metadata_index.json`` appended, and (as unembargo's zip has them, so the two do the
same work) every other object of the folder (sidecars, expectedSensors) read from the
bucket, checked against its listing's md5 and appended DEFLATEd, and every raw in the
zip read back and checked against its listing's size and md5; install the zip; export the dimension yaml;
``transfer_dimension_records_from`` and ``ingest_zip(transfer="direct")``; checksums of
both files read back, ``add_replicas``, the Tract/NoTract and Obs datasets created and
attached; the Obs dataset closed and tagged. Butlers and the Rucio client are built
once per run, as a cron invocation does. It still checks less than unembargo (no check
of an existing zip, no import of the yaml into an empty repo, no read-back of Rucio).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler, DatasetRef
from lsst.resources import ResourcePath
from rucio.common.exception import DataIdentifierAlreadyExists

from unembargo.adapters.butler import (
    RAW_TYPES,
    collect_records,
    overlapping_tracts,
    register_dataset_types,
    write_yaml,
)
from unembargo.adapters.destination import checksums
from unembargo.adapters.headers import METADATA_INDEX, is_fits, metadata_index, raw_metadata
from unembargo.adapters.rucio_client import connect
from unembargo.adapters.s3 import use_loopback_credentials
from unembargo.models import names
from unembargo.models.exposure import Exposure
from unembargo.models.settings import Settings


class SerialBaseline:
    """One cron run: clients built once, then each exposure's five steps in turn."""

    def __init__(self, settings: Settings) -> None:
        import boto3

        self.settings = settings
        self.s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
        self.embargo = Butler.from_config(settings.embargo_butler, writeable=False)
        self.main = Butler.from_config(settings.main_butler, writeable=True)
        self.rucio = connect(settings)

    def unembargo(self, exp: Exposure) -> dict[str, float]:
        """The five steps of one exposure; seconds per step."""
        seconds: dict[str, float] = {}
        zip_path = self.settings.dest_root / names.zip_relpath(exp.instrument, exp.day_obs, exp.obs_id)
        yaml_path = self.settings.dest_root / names.yaml_relpath(exp.instrument, exp.day_obs, exp.obs_id)
        if zip_path.exists():
            return seconds
        started = time.perf_counter()
        refs = self._zip(exp, zip_path)
        seconds["zip"] = time.perf_counter() - started
        started = time.perf_counter()
        records = collect_records(self.embargo, exp)
        tracts = overlapping_tracts(self.embargo, exp, records)
        write_yaml(self.embargo, records, yaml_path)
        seconds["export"] = time.perf_counter() - started
        started = time.perf_counter()
        self.main.transfer_dimension_records_from(self.embargo, refs)
        register_dataset_types(self.main, refs)
        self.main.ingest_zip(ResourcePath(zip_path), transfer="direct")
        seconds["ingest"] = time.perf_counter() - started
        started = time.perf_counter()
        self._register(exp, [zip_path, yaml_path], tracts)
        seconds["register"] = time.perf_counter() - started
        started = time.perf_counter()
        obs = names.obs_dataset(exp.instrument, exp.day_obs, exp.obs_id)
        self.rucio.close(self.settings.rucio_scope, obs)
        self.rucio.set_metadata(self.settings.rucio_scope, obs, names.BACKUP_KEY, names.BACKUP_VALUE)
        seconds["tag"] = time.perf_counter() - started
        return seconds

    def _zip(self, exp: Exposure, final: Path) -> list[DatasetRef]:
        """retrieve_artifacts_zip of every raw, the header index appended, then installed."""
        refs = self._refs(exp)
        prefix = names.exposure_prefix(self.settings.s3_prefix, exp.instrument, exp.day_obs, exp.obs_id)
        sensors = self.s3.get_object(
            Bucket=self.settings.s3_bucket, Key=prefix + names.expected_sensors_name(exp.obs_id)
        )["Body"].read()
        expected = len(json.loads(sensors)["expectedSensors"])
        if len(refs) < expected:
            raise RuntimeError(f"{exp.obs_id}: {len(refs)} raws of {expected} expected; skipped")
        final.parent.mkdir(parents=True, exist_ok=True)
        listing = {
            item["Key"][len(prefix) :]: item
            for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.s3_bucket, Prefix=prefix
            )
            for item in page.get("Contents", [])
        }
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".cron-") as tmp:
            made = self.embargo.retrieve_artifacts_zip(refs, tmp)
            path = Path(made.ospath)
            with zipfile.ZipFile(path, "a") as zf:
                raws = [n for n in zf.namelist() if is_fits(n)]
                headers = {}
                inside = set()
                for name in raws:
                    # Members are named <prefix><the object's file name>.
                    source = next(k for k in listing if name.endswith(k.rsplit("/", 1)[-1]))
                    data = zf.read(name)
                    _check(name, data, listing[source])
                    headers[name] = raw_metadata(name, data)
                    inside.add(source)
                zf.writestr(METADATA_INDEX, metadata_index({n: h for n, h in headers.items() if h}))
                for name, item in sorted(listing.items()):
                    if name not in inside:
                        got = self.s3.get_object(Bucket=self.settings.s3_bucket, Key=item["Key"])
                        body = got["Body"].read()
                        _check(name, body, item)
                        zf.writestr(name, body, compress_type=zipfile.ZIP_DEFLATED)
            os.replace(path, final)
        return refs

    def _refs(self, exp: Exposure) -> list[DatasetRef]:
        refs: list[DatasetRef] = []
        for dataset_type in RAW_TYPES:
            if dataset_type not in {t.name for t in self.embargo.registry.queryDatasetTypes()}:
                continue
            refs += self.embargo.query_datasets(
                dataset_type,
                collections="*",
                find_first=False,
                data_id={"instrument": exp.instrument, "exposure": exp.exposure_id},
                with_dimension_records=True,
                explain=False,
            )
        return refs

    def _register(self, exp: Exposure, paths: list[Path], tracts: list[int]) -> None:
        """Checksums read back from disk, replicas, datasets, attachments."""
        scope = self.settings.rucio_scope
        root = self.settings.dest_root
        replicas = []
        for path in paths:
            size, md5, adler32 = checksums(path)
            name = path.relative_to(root).as_posix()
            replicas.append({"scope": scope, "name": name, "bytes": size, "md5": md5, "adler32": adler32})
        self.rucio.add_replicas(self.settings.rucio_rse, replicas)
        files = [{"scope": scope, "name": r["name"]} for r in replicas]
        datasets = names.exposure_datasets(exp.instrument, exp.day_obs, exp.obs_id, tracts)
        for dataset in datasets:
            try:
                self.rucio.add_dataset(scope, dataset)
            except DataIdentifierAlreadyExists:
                pass
        self.rucio.add_files_to_datasets(
            [{"scope": scope, "name": d, "dids": files} for d in datasets], ignore_duplicate=True
        )


def _check(name: str, data: bytes, item: dict[str, Any]) -> None:
    """The cron tool's check of an object against its listing: size and ETag md5."""
    etag = item["ETag"].strip('"')
    if len(data) != item["Size"] or ("-" not in etag and hashlib.md5(data).hexdigest() != etag):
        raise RuntimeError(f"{name} does not match its listing")


def run(settings: Settings, exposures: Sequence[Exposure]) -> dict[str, Any]:
    """Every exposure in turn; per-exposure start/end (epoch seconds) and step seconds."""
    started = time.time()
    baseline = SerialBaseline(settings)
    ready, cpu_ready = time.time(), time.process_time()
    rows = []
    for exp in exposures:
        begin = time.time()
        steps = baseline.unembargo(exp)
        rows.append({"obs_id": exp.obs_id, "start": begin, "end": time.time(), "steps": steps})
    return {
        "process_start": started,
        "clients_ready": ready,
        "cpu_ready": cpu_ready,
        "cpu_end": time.process_time(),
        "exposures": rows,
    }


def main(argv: Sequence[str]) -> None:
    settings = Settings()
    use_loopback_credentials(settings.s3_endpoint_url)
    wanted = json.loads(Path(argv[0]).read_text())
    exposures = [Exposure(e["instrument"], e["day_obs"], e["obs_id"], e["exposure_id"]) for e in wanted]
    json.dump(run(settings, exposures), sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
