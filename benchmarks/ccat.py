"""Benchmark: the CCAT flow, packages per minute and MB/s from filing at the telescope to
verified in both archives (SOURCE and BUFFER copies deleted), against a plain copy of the
same bytes along the same path with no checksums, database or workflows.

    .venv/bin/python benchmarks/ccat.py                       # 20 observations of 3 x 2 MiB
    .venv/bin/python benchmarks/ccat.py --packages 40 --file-mib 8

Runs on the test stack's Temporal and moto S3 (tests/stack; started if needed), with a
database and namespace of its own and one real worker process per site. The plain copy
tars each observation, rsyncs the tar between the same buffer folders, uploads it to the
first archive bucket and copies it to the second, one package after another.

Results go to ``benchmarks/results/ccat-<UTC time>.json`` and the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "stack"), str(REPO / "benchmarks")]

import boto3  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from sqlmodel import Session, select  # noqa: E402
from temporalio.client import Client  # noqa: E402

from report import write_results  # noqa: E402
from support import WorkerProcess, stack_settings  # noqa: E402
from unembargo.adapters.ccat_rsync import rsync  # noqa: E402
from unembargo.client.ccat import file_observation, start_package  # noqa: E402
from unembargo.devstack import stack, temporal  # noqa: E402
from unembargo.devstack.ccat_sites import CcatSites, add_sites, make_buckets  # noqa: E402
from unembargo.models import ccat as c  # noqa: E402
from unembargo.models.ccat_tables import RawDataPackage  # noqa: E402
from unembargo.models.tables import connect  # noqa: E402

MIB = 1024 * 1024


def observe(sites: CcatSites, n: int, files: int, size: int, prefix: str = "obs") -> list[list[Path]]:
    out = []
    for i in range(n):
        folder = sites.root / sites.source / f"{prefix}-{i:04d}"
        folder.mkdir(parents=True)
        paths = [folder / f"{prefix}-{i:04d}_m{m}.fits" for m in range(files)]
        for p in paths:
            p.write_bytes(os.urandom(size))
        out.append(paths)
    return out


def plain_copy(sites: CcatSites, observations: list[list[Path]], endpoint: str) -> float:
    """The same bytes along the same path, serially, with nothing checked or recorded."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    first, second = sites.archives
    buffer, far = sites.root / sites.buffers[0] / "plain", sites.root / first.buffer / "plain"
    buffer.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for paths in observations:
        tar = buffer / f"{paths[0].parent.name}.tar"
        with tarfile.open(tar, "w") as out:
            for p in paths:
                out.add(p, arcname=p.name)
        rsync(tar, far / tar.name)
        key = f"plain/{tar.name}"
        s3.upload_file(str(far / tar.name), first.where, key)
        s3.copy({"Bucket": first.where, "Key": key}, second.where, key)
    return time.monotonic() - t0


async def main(args: argparse.Namespace) -> dict[str, Any]:
    base = stack_settings()
    for service in stack.SERVICES:
        if service.name in ("s3", "temporal"):
            service.ensure(base)
    root = Path(tempfile.mkdtemp(prefix="bench-ccat-"))
    tag = uuid.uuid4().hex[:6]
    settings = base.model_copy(
        update={
            "state_dir": root / "state",
            "database_url": SecretStr(f"sqlite:///{root / 'ccat.db'}"),
            "workflow_task_queue": f"bench-ccat-{tag}",
            "temporal_namespace": f"bench-ccat-{tag}",
        }
    )
    await temporal.ensure_namespace(
        await Client.connect(settings.temporal_address), settings.temporal_namespace
    )
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    engine = connect(settings.database_url.get_secret_value())
    assert settings.s3_endpoint_url is not None
    with Session(engine) as s:
        sites = add_sites(s, root / "sites", tag=tag, s3_endpoint=settings.s3_endpoint_url)
    make_buckets(sites, settings.s3_endpoint_url)
    size = args.file_mib * MIB
    observations = observe(sites, args.packages, args.files, size)
    package_bytes = args.files * size
    env = {"UNEMBARGO_CCAT_BUNDLE_LIMIT_BYTES": str(args.per_bundle * package_bytes + MIB)}
    workers = [
        WorkerProcess(settings, [sites.source, *sites.buffers], env),
        *(WorkerProcess(settings, [a.buffer, a.archive], env) for a in sites.archives),
    ]
    policy = c.CcatPolicy(bundle_wait_s=2)
    try:
        t0 = time.monotonic()
        ids = []
        with Session(engine) as s:
            for paths in observations:
                obs = paths[0].parent.name
                file_observation(s, sites.source, obs, paths)
                ids.append(
                    (await start_package(client, s, settings.workflow_task_queue, obs, sites.source, policy))[
                        0
                    ]
                )
        for wid in ids:
            await client.get_workflow_handle(wid).result()
        with Session(engine) as s:
            bundles = sorted({r.transfer for r in s.exec(select(RawDataPackage)).all() if r.transfer})
        for b in bundles:
            await client.get_workflow_handle(c.transfer_workflow_id(b)).result()
        flow_s = time.monotonic() - t0
    finally:
        for w in workers:
            w.stop()
    # The flow deleted its SOURCE files: as many bytes again for the plain copy.
    plain = plain_copy(
        sites, observe(sites, args.packages, args.files, size, "plain"), settings.s3_endpoint_url
    )
    total_mb = args.packages * package_bytes / 1e6
    return {
        "packages": args.packages,
        "files_per_package": args.files,
        "file_mib": args.file_mib,
        "bundles": len(bundles),
        "flow_s": round(flow_s, 2),
        "flow_packages_per_min": round(args.packages / flow_s * 60, 1),
        "flow_mb_per_s": round(total_mb / flow_s, 2),
        "plain_s": round(plain, 2),
        "plain_packages_per_min": round(args.packages / plain * 60, 1),
        "plain_mb_per_s": round(total_mb / plain, 2),
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        ("", "CCAT flow", "plain copy"),
        ("wall time", f"{r['flow_s']} s", f"{r['plain_s']} s"),
        ("packages / min", str(r["flow_packages_per_min"]), str(r["plain_packages_per_min"])),
        ("MB / s (package bytes to both archives)", str(r["flow_mb_per_s"]), str(r["plain_mb_per_s"])),
    ]
    head = (
        f"{r['packages']} packages of {r['files_per_package']} x {r['file_mib']} MiB, {r['bundles']} bundles"
    )
    lines = [head, f"| {' | '.join(rows[0])} |", "|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(x)} |" for x in rows[1:]])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packages", type=int, default=20, help="observations (one package each)")
    parser.add_argument("--files", type=int, default=3, help="raw files per observation")
    parser.add_argument("--file-mib", type=int, default=2, help="size of each raw file (MiB)")
    parser.add_argument("--per-bundle", type=int, default=4, help="packages per bundle")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    path = write_results("ccat", result)
    print(table(result))
    print(f"results: {path.relative_to(REPO)}")
