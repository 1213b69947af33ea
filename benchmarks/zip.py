"""Benchmark: the zip step against a plain copy of the same bytes, in the same run.

    .venv/bin/python benchmarks/zip.py                       # 2 exposures of 205 x 8 MiB, 3 rounds
    .venv/bin/python benchmarks/zip.py --rounds 5 --mib 8 --exposures 2
    .venv/bin/python benchmarks/zip.py --profile             # also a py-spy profile of one zip

On the benchmark's own stack (benchmarks/pipeline.py's, under ``.dev/bench``). It seeds
``--exposures`` exposures of 205 raws of ``--mib`` MiB (plus their sidecars) once, then
per round, alternating, for each exposure: the plain copy (every object of the folder
read from the same S3 endpoint with the zip step's client and 12 parallel GETs, written
in order to one file on the destination disk and fsynced) and the zip step itself (the
real activity in this process, as a worker runs it, its zip then deleted). Interleaving
puts the baseline and the candidate under the same load. It prints the medians and
their ratio (the target: the zip at least 70% of the plain copy's MB/s), and writes
``benchmarks/results/zip-<UTC time>.json`` with every run, the CPU seconds of this
process and of moto per run, and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline import (
    MIB,
    bring_up,
    drop_bucket,
    plain_copy,
    prepare_variant,
    seed,
    source_settings,
    stack_settings,
    variant_settings,
)
from temporalio.testing import ActivityEnvironment

from report import REPO, write_results
from unembargo.activities.context import Resources
from unembargo.activities.zip import ZipActivities
from unembargo.devstack import procs
from unembargo.models import names
from unembargo.models.exposure import Exposure, StepInput
from unembargo.models.settings import Settings

TARGET = 0.70


def moto_cpu(base: Settings) -> float:
    """CPU seconds so far of the stack's moto server."""
    from pipeline import cpu_seconds

    rec = procs.recorded(base.state_dir, "s3")
    return cpu_seconds(rec.pid) if rec is not None else 0.0


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def zip_once(resources: Resources, exp: Exposure) -> dict[str, Any]:
    """The zip activity once, as a worker calls it; its zip is deleted after."""
    final = resources.settings.dest_root / names.zip_relpath(exp.instrument, exp.day_obs, exp.obs_id)
    started = time.perf_counter()
    receipt = ActivityEnvironment().run(ZipActivities(resources).zip_exposure, StepInput(exp))
    seconds = time.perf_counter() - started
    assert not receipt.already_done
    size = final.stat().st_size
    final.unlink()
    return {"bytes": size, "seconds": round(seconds, 3), "mb_per_s": round(size / MIB / seconds, 1)}


def measured(run: Any, base: Settings) -> dict[str, Any]:
    """``run()``'s result with this process's and moto's CPU seconds and the load."""
    load = os.getloadavg()[0]
    cpu, moto = own_cpu(), moto_cpu(base)
    out = run()
    out["cpu_s"] = round(own_cpu() - cpu, 2)
    out["moto_cpu_s"] = round(moto_cpu(base) - moto, 2)
    out["load"] = round(load, 2)
    return out


def profile(resources: Resources, exp: Exposure, path: Path) -> None:
    """A py-spy profile (collapsed stacks, native frames, every thread) of one zip."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(os.getpid()), "--threads", "--native", "-f", "raw", "-o", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        zip_once(resources, exp)
    finally:
        proc.send_signal(2)
        proc.wait(timeout=60)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "mb_per_s_median": round(statistics.median(r["mb_per_s"] for r in runs), 1),
        "seconds_median": round(statistics.median(r["seconds"] for r in runs), 2),
        "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 2),
        "moto_cpu_s_median": round(statistics.median(r["moto_cpu_s"] for r in runs), 2),
        "runs": runs,
    }


def table(result: dict[str, Any]) -> str:
    copy, zipped = result["plain_copy"], result["zip"]
    ratio = result["ratio"]
    lines = [
        "| what | MB/s (median) | s per exposure | CPU s (this process) | CPU s (moto) | runs |",
        "|---|---:|---:|---:|---:|---:|",
        f"| plain copy (baseline) | {copy['mb_per_s_median']:.0f} | {copy['seconds_median']:.2f} "
        f"| {copy['cpu_s_median']:.2f} | {copy['moto_cpu_s_median']:.2f} | {len(copy['runs'])} |",
        f"| zip step | {zipped['mb_per_s_median']:.0f} | {zipped['seconds_median']:.2f} "
        f"| {zipped['cpu_s_median']:.2f} | {zipped['moto_cpu_s_median']:.2f} | {len(zipped['runs'])} |",
        f"| zip / plain copy | {ratio:.0%} (target {TARGET:.0%}: {'met' if ratio >= TARGET else 'missed'}) "
        "| | | | |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=2)
    parser.add_argument("--mib", type=int, default=8, help="size of each raw")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="write a py-spy profile of one more zip")
    args = parser.parse_args()
    base = stack_settings("bench")
    bring_up(base, "bench")
    tag = uuid.uuid4().hex[:8]
    root = base.state_dir.resolve() / "bench" / "zip" / tag
    source = source_settings(base, root, tag)
    settings = variant_settings(source, root / "v", f"{tag}z")
    prepare_variant(settings)
    from sqlmodel import SQLModel

    resources = Resources(settings)
    SQLModel.metadata.create_all(resources.engine)
    started = time.perf_counter()
    print(f"seeding {args.exposures} exposures x 205 x {args.mib} MiB", flush=True)
    exposures = seed(source, args.exposures, args.mib * MIB)
    print(f"  seeded in {time.perf_counter() - started:.0f} s", flush=True)
    result: dict[str, Any] = {
        "argv": sys.argv[1:],
        "cpus": os.cpu_count(),
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
    }
    copies: list[dict[str, Any]] = []
    zips: list[dict[str, Any]] = []
    try:
        for rnd in range(args.rounds):
            for exp in exposures:
                # Alternate which goes first, so neither always follows the other.
                order = ("copy", "zip") if (rnd + exposures.index(exp)) % 2 == 0 else ("zip", "copy")
                for what in order:
                    if what == "copy":
                        run = measured(
                            lambda e=exp: plain_copy(source, [e], settings.dest_root / "copy"), base
                        )
                        copies.append(run)
                    else:
                        run = measured(lambda e=exp: zip_once(resources, e), base)
                        zips.append(run)
                    print(
                        f"  round {rnd + 1} {exp.obs_id} {what}: {run['mb_per_s']} MB/s, "
                        f"cpu {run['cpu_s']} s, moto {run['moto_cpu_s']} s, load {run['load']}",
                        flush=True,
                    )
        if args.profile:
            path = REPO / "benchmarks" / "results" / f"zip-profile-{tag}.txt"
            profile(resources, exposures[0], path)
            result["profile"] = str(path.relative_to(REPO))
    finally:
        drop_bucket(source)
    result["plain_copy"] = summary(copies)
    result["zip"] = summary(zips)
    result["ratio"] = round(result["zip"]["mb_per_s_median"] / result["plain_copy"]["mb_per_s_median"], 3)
    result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(result))
    print(f"results: {write_results('zip', result).relative_to(REPO)}")


if __name__ == "__main__":
    main()
