"""Benchmark: a backlog of exposures queued at once, drained by real workers, and the CPU
per exposure of the whole stack against the serial cron loop doing the same work.

    .venv/bin/python benchmarks/backlog.py --exposures 1000    # the issue's backlog (hours to seed)
    .venv/bin/python benchmarks/backlog.py --exposures 100 --serial 20

On the benchmark's own stack (benchmarks/pipeline.py's, ``.dev/bench``). It seeds
``--exposures`` exposures of 205 x 64 KiB raws (plus sidecars) of one day, then:

1. ``serial``: benchmarks/serial_baseline.py over the first ``--serial`` of them (the cron
   loop, sidecars and their checks included), with a main butler, destination and Rucio
   scope of its own;
2. ``backlog``: ``--workers`` real workers, then the real ``unembargo start --day D
   --no-wait`` (timed: the backlog queued at once), sampling every ``--every`` seconds until
   every workflow is done: exposures done, worker RSS, Temporal server RSS. Then the real
   ``unembargo reconcile --day D --json`` (timed).

For both, the CPU seconds per exposure of every process of the stack, read from /proc:
the loop (or the workers), Temporal, moto, the Rucio server and its daemons, and the
PostgreSQL backends of Rucio's database (the stack's only PostgreSQL user; PostgreSQL is
shared with other users of the machine, so only those backends are counted). Prints a
table and writes ``benchmarks/results/backlog-<UTC time>.json`` with every sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline import (
    DAY_OBS,
    KIB,
    WorkerSet,
    bring_up,
    child_env,
    cpu_seconds,
    drop_bucket,
    polled_by,
    prepare_variant,
    run_serial,
    seed,
    source_settings,
    stack_settings,
    variant_settings,
)
from temporalio.client import Client

from report import REPO, write_results
from unembargo.devstack import procs
from unembargo.models.settings import Settings

TARGET_CPU_RATIO = 1.15


def rss_mb(pid: int) -> float:
    """Resident set of a process and its live descendants, MB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return round(total / 1024, 1)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, frontier = [], [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            out.append(child)
            frontier.append(child)
    return out


def rucio_backends_cpu(base: Settings) -> float:
    """CPU seconds of the live PostgreSQL backends serving the stack's Rucio database."""
    from unembargo.devstack.rucio_server import RucioPaths

    database = RucioPaths.of(base).database
    total = 0.0
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if text.startswith("postgres:") and f" {database} " in text:
            total += cpu_seconds(int(cmd.parent.name))
    return total


def stack_cpu(base: Settings) -> dict[str, float]:
    """CPU seconds so far of each service of the stack (trees: gunicorn's workers too)."""
    found = {}
    for name in ("s3", "temporal", "rucio"):
        rec = procs.recorded(base.state_dir, name)
        if rec is not None:
            found[name] = cpu_seconds(rec.pid)
    for name in ("rucio-judge-evaluator", "rucio-judge-cleaner"):
        rec = procs.recorded(base.state_dir, name)
        if rec is not None:
            found["rucio"] = found.get("rucio", 0.0) + cpu_seconds(rec.pid)
    found["postgres (rucio)"] = rucio_backends_cpu(base)
    return found


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}


def profile_worker(pid: int, seconds: float, tag: str) -> subprocess.Popen[bytes]:
    """py-spy (non-blocking: the worker is not paused) on a worker for ``seconds``, as
    collapsed stacks of every thread (py-spy takes no native frames without pausing)."""
    out = REPO / "benchmarks" / "results" / f"backlog-profile-{tag}.txt"
    spy = str(Path(sys.executable).with_name("py-spy"))
    argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50"]
    argv += ["--nonblocking", "--threads", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cli(settings: Settings, *args: str) -> tuple[float, str]:
    """Seconds and stdout of one ``unembargo`` command in a child process (start-up included)."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "unembargo.cli.app", *args],
        env=child_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - started
    if out.returncode not in (0, 1):
        raise RuntimeError(f"unembargo {' '.join(args)} exited {out.returncode}: {out.stderr[-3000:]}")
    return round(seconds, 2), out.stdout


async def step_rates(client: Client, began: float, ended: float, parts: int = 4) -> list[float]:
    """Steps (activities) completed per minute in each of ``parts`` equal stretches of the
    drain, from every workflow's history: the work rate, whatever order exposures finish in."""
    from datetime import UTC

    from temporalio.api.enums.v1 import EventType

    times = []
    async for wf in client.list_workflows():
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        times += [
            e.event_time.ToDatetime(tzinfo=UTC).timestamp()
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        ]
    width = (ended - began) / parts
    counts = [0] * parts
    for t in times:
        if began <= t <= ended:
            counts[min(parts - 1, int((t - began) / width))] += 1
    return [round(c / width * 60, 1) for c in counts]


async def count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def drain(
    args: argparse.Namespace, base: Settings, settings: Settings, locations: list[str], n: int
) -> dict[str, Any]:
    """Start the backlog with the real CLI, sample until it is drained."""
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    workers = WorkerSet.start(settings, locations, args.workers)
    temporal_pid = procs.recorded(base.state_dir, "temporal").pid
    samples: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 180
        while not await polled_by(client, settings, locations, args.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("the workers never polled their queues")
            await asyncio.sleep(0.5)
        load = os.getloadavg()
        cpu_before = stack_cpu(base)
        workers_before = sum(cpu_seconds(p.pid) for p in workers.procs)
        began = time.time()
        start_s, start_out = await asyncio.to_thread(
            cli, settings, "start", "--day", str(DAY_OBS), "--no-wait", "--json"
        )
        started = time.time()
        spy = profile_worker(workers.procs[0].pid, args.profile, args.tag) if args.profile else None
        done = 0
        while True:
            done = await count(client, "ExecutionStatus = 'Completed'")
            running = await count(client, "ExecutionStatus = 'Running'")
            samples.append(
                {
                    "t": round(time.time() - began, 1),
                    "done": done,
                    "running": running,
                    "worker_rss_mb": [rss_mb(p.pid) for p in workers.procs],
                    "temporal_rss_mb": rss_mb(temporal_pid),
                    "load": round(os.getloadavg()[0], 2),
                }
            )
            if running == 0:
                break
            await asyncio.sleep(args.every)
        ended = time.time()
        if spy is not None:
            spy.wait(timeout=args.profile + 60)
        workers_cpu = sum(cpu_seconds(p.pid) for p in workers.procs) - workers_before
        services = delta(stack_cpu(base), cpu_before)
        steps_per_min = await step_rates(client, began, ended)
        not_completed = {
            status: await count(client, f"ExecutionStatus = '{status}'")
            for status in ("Failed", "TimedOut", "Terminated", "Canceled")
        }
    finally:
        workers.stop()
    reconcile_s, reconcile_out = await asyncio.to_thread(
        cli, settings, "reconcile", "--day", str(DAY_OBS), "--json"
    )
    return {
        "workers": args.workers,
        "load_average_before": [round(x, 2) for x in load],
        "start_cli_s": start_s,
        "start_reported": _started(start_out),
        "seconds": round(ended - began, 1),
        "start_to_drained_s": round(ended - started, 1),
        "done": done,
        "steps_per_min_by_quarter": steps_per_min,
        "not_completed": not_completed,
        "cpu_s": {"workers": round(workers_cpu, 2), **services},
        "reconcile_cli_s": reconcile_s,
        "reconcile_counts": _verdicts(reconcile_out),
        "samples": samples,
    }


def _started(out: str) -> Any:
    try:
        data = json.loads(out)
    except ValueError:
        return None
    if isinstance(data, dict):
        return {k: (len(v) if isinstance(v, list) else v) for k, v in data.items()}
    return len(data) if isinstance(data, list) else None


def _verdicts(out: str) -> dict[str, int] | None:
    try:
        data = json.loads(out)
    except ValueError:
        return None
    counts: dict[str, int] = {}
    for row in data.get("exposures", []) if isinstance(data, dict) else []:
        verdict = str(row.get("class", "?"))
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def rates(samples: list[dict[str, Any]], parts: int = 4) -> list[float]:
    """Exposures per minute in each of ``parts`` equal stretches of the drain (steadiness)."""
    end = samples[-1]["t"]
    out = []
    for i in range(parts):
        lo, hi = end * i / parts, end * (i + 1) / parts
        at = [s for s in samples if lo <= s["t"] <= hi]
        if len(at) >= 2 and at[-1]["t"] > at[0]["t"]:
            out.append(round((at[-1]["done"] - at[0]["done"]) / (at[-1]["t"] - at[0]["t"]) * 60, 1))
    return out


def spread(values: list[float]) -> list[float]:
    """Min, median and max."""
    return [min(values), statistics.median(values), max(values)] if values else []


def summary(result: dict[str, Any]) -> dict[str, Any]:
    b = result["backlog"]
    n = b["done"]
    worker_cpu = b["cpu_s"]["workers"]
    stack = sum(b["cpu_s"].values())
    s = result.get("serial")
    out: dict[str, Any] = {
        "exposures_per_min": round(n / b["seconds"] * 60, 2),
        "exposures_per_worker_cpu_s": round(n / worker_cpu, 4),
        # A worker that keeps one core busy: exposures/min per worker CPU-second per second.
        "exposures_per_min_per_busy_worker_core": round(n / worker_cpu * 60, 1),
        "rate_by_quarter_per_min": rates(b["samples"]),
        "worker_rss_mb_min_median_max": [
            spread([x["worker_rss_mb"][i] for x in b["samples"]]) for i in range(b["workers"])
        ],
        "temporal_rss_mb_min_median_max": spread([x["temporal_rss_mb"] for x in b["samples"]]),
        "stack_cpu_s_per_exposure": round(stack / n, 3),
        "stack_cpu_s_per_exposure_by_process": {k: round(v / n, 3) for k, v in b["cpu_s"].items()},
    }
    if s:
        serial_stack = sum(s["cpu_s"].values())
        out["serial_stack_cpu_s_per_exposure"] = round(serial_stack / s["exposures"], 3)
        out["serial_stack_cpu_s_per_exposure_by_process"] = {
            k: round(v / s["exposures"], 3) for k, v in s["cpu_s"].items()
        }
        out["cpu_ratio"] = round(out["stack_cpu_s_per_exposure"] / out["serial_stack_cpu_s_per_exposure"], 3)
    return out


def table(result: dict[str, Any]) -> str:
    b, s, m = result["backlog"], result.get("serial"), result["summary"]
    rss = "; ".join(f"{lo:.0f}/{mid:.0f}/{hi:.0f}" for lo, mid, hi in m["worker_rss_mb_min_median_max"])
    t = m["temporal_rss_mb_min_median_max"]
    quarters = ", ".join(map(str, m["rate_by_quarter_per_min"]))
    steps = ", ".join(map(str, b.get("steps_per_min_by_quarter", [])))
    lines = [
        "| measure | value | baseline / target |",
        "|---|---:|---|",
        f"| backlog | {result['exposures']} x 205 x 64 KiB, {b['workers']} worker(s) | |",
        f"| `unembargo start` of the backlog (s) | {b['start_cli_s']} | seconds |",
        f"| start to drained (s) | {b['start_to_drained_s']} | |",
        f"| exposures/min | {m['exposures_per_min']} | |",
        f"| exposures done/min by quarter of the drain | {quarters} | steady |",
        f"| steps done/min by quarter of the drain | {steps} | steady |",
        f"| exposures per worker CPU-second | {m['exposures_per_worker_cpu_s']} "
        f"({m['exposures_per_min_per_busy_worker_core']}/min per busy core) | |",
        f"| worker RSS MB, min/median/max | {rss} | flat |",
        f"| Temporal RSS MB, min/median/max | {t[0]:.0f}/{t[1]:.0f}/{t[2]:.0f} | flat |",
        f"| workflows not completed | {sum(b['not_completed'].values())} | 0 |",
        f"| `unembargo reconcile --day` (s) | {b['reconcile_cli_s']} | seconds |",
        f"| stack CPU s per exposure | {m['stack_cpu_s_per_exposure']} | |",
    ]
    if s:
        ratio = m["cpu_ratio"]
        verdict = "met" if ratio <= TARGET_CPU_RATIO else "missed"
        lines += [
            f"| serial loop: stack CPU s per exposure ({s['exposures']} exposures) "
            f"| {m['serial_stack_cpu_s_per_exposure']} | |",
            f"| CPU per exposure, unembargo / serial | {ratio:.2f}x | <= {TARGET_CPU_RATIO}x: {verdict} |",
        ]
        by = m["stack_cpu_s_per_exposure_by_process"]
        sby = m["serial_stack_cpu_s_per_exposure_by_process"]
        for k in by:
            lines.append(f"| CPU s per exposure: {k} | {by[k]} | {sby.get(k, '-')} |")
        lines.append(f"| CPU s per exposure: baseline process | - | {sby.get('baseline', '-')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exposures", type=int, default=1000)
    parser.add_argument("--serial", type=int, default=20, help="exposures the serial loop does (0: none)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--profile", type=float, default=0, help="seconds of py-spy on the first worker")
    args = parser.parse_args()
    base = stack_settings("bench")
    bring_up(base, "bench")
    tag = args.tag = uuid.uuid4().hex[:8]
    root = base.state_dir.resolve() / "bench" / "backlog" / tag
    source = source_settings(base, root, tag)
    result: dict[str, Any] = {
        "argv": sys.argv[1:],
        "cpus": os.cpu_count(),
        "exposures": args.exposures,
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
    }
    print(f"seeding {args.exposures} exposures x 205 x 64 KiB (tag {tag})", flush=True)
    started = time.perf_counter()
    exposures = seed(source, args.exposures, 64 * KIB)
    result["seed_s"] = round(time.perf_counter() - started, 1)
    print(f"  seeded in {result['seed_s']} s", flush=True)
    try:
        if args.serial:
            settings = variant_settings(source, root / "serial", f"{tag}s")
            prepare_variant(settings)
            chosen = exposures[: args.serial]
            print(f"serial: {len(chosen)} exposures (load {os.getloadavg()[0]:.1f})", flush=True)
            before = stack_cpu(base)
            raw = run_serial(settings, chosen)
            cpu = {"baseline": raw["client_cpu_s"], **delta(stack_cpu(base), before)}
            span = max(r["end"] for r in raw["rows"]) - min(r["start"] for r in raw["rows"])
            result["serial"] = {
                "exposures": len(chosen),
                "exposures_per_min": round(len(chosen) / span * 60, 2),
                "cpu_s": cpu,
                "peak_rss_mb": raw["peak_rss_mb"],
            }
            print(f"  serial: {result['serial']['exposures_per_min']} exposures/min, cpu {cpu}", flush=True)
        settings = variant_settings(source, root / "backlog", f"{tag}b")
        locations = prepare_variant(settings)
        print(f"backlog: {args.exposures} exposures, {args.workers} worker(s)", flush=True)
        result["backlog"] = asyncio.run(drain(args, base, settings, locations, args.exposures))
    finally:
        drop_bucket(source)
    result["summary"] = summary(result)
    result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(result))
    print(f"results: {write_results('backlog', result).relative_to(REPO)}")


if __name__ == "__main__":
    main()
