"""Benchmark: how long a step is stalled by a worker SIGKILLed mid-step, and by a Temporal
server restart, on the benchmark's own stack (benchmarks/pipeline.py's, ``.dev/bench``).

    .venv/bin/python benchmarks/recovery.py                    # 20 kills, one restart
    .venv/bin/python benchmarks/recovery.py --kills 5 --restarts 0

Kills: two real workers serve the queues. Each trial starts one exposure (205 raws of
``--mib`` MiB, seeded once; a terminated run is restarted under the same id), waits until
its zip step has run ``--kill-after`` seconds on one worker, SIGKILLs that worker (and
starts a replacement at once, as a supervisor would), and times, on the server's clock,
the kill to the step's next attempt starting on another worker; then terminates the run.
The heartbeat timeout is ``--heartbeat`` (default: the setting's), the retry interval
the step's own (models/exposure.STEP_RETRY).

Heartbeat cost: the Temporal server's CPU per heartbeat (``--heartbeats`` heartbeats sent
for a running step), to give the server's load per running step at each heartbeat timeout
(the SDK sends at most one heartbeat per 0.8 x the timeout).

Restart: ``--restart-exposures`` exposures of 205 x 64 KiB started at once; while they run,
the Temporal server is stopped and started again on its own database; timed from the
stop to the server answering, to every unfinished exposure's next history event, and
to the last one done.

Prints a table, writes ``benchmarks/results/recovery-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

from pipeline import (
    KIB,
    MIB,
    WorkerSet,
    bring_up,
    cpu_seconds,
    drop_bucket,
    p95,
    polled_by,
    prepare_variant,
    seed,
    source_settings,
    stack_settings,
    variant_settings,
)
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.workflowservice.v1 import RecordActivityTaskHeartbeatByIdRequest
from temporalio.client import Client, WorkflowExecutionStatus

from report import REPO, write_results
from unembargo.devstack import procs, temporal
from unembargo.engine.starter import start_exposures
from unembargo.models.exposure import STEP_RETRY, STEPS, Exposure, Policy, Step
from unembargo.models.names import workflow_id
from unembargo.models.settings import Settings

TARGET_S = 15.0
ZIP_ACTIVITY = STEPS[Step.ZIP].activity


class Workers:
    """Two (or more) real workers; any one can be killed and replaced."""

    def __init__(self, settings: Settings, locations: list[str], count: int) -> None:
        self.settings, self.locations = settings, locations
        self.sets = [WorkerSet.start(settings, locations, 1) for _ in range(count)]

    def pids(self) -> list[int]:
        return [s.procs[0].pid for s in self.sets]

    def kill(self, pid: int) -> float:
        """SIGKILL the worker ``pid``; start its replacement. The wall time of the kill."""
        [dead] = [s for s in self.sets if s.procs[0].pid == pid]
        os.killpg(pid, signal.SIGKILL)
        killed = time.time()
        dead.procs[0].wait(timeout=30)
        self.sets.remove(dead)
        for log in dead.logs:
            log.unlink(missing_ok=True)
        self.sets.append(WorkerSet.start(self.settings, self.locations, 1))
        return killed

    def stop(self) -> None:
        for s in self.sets:
            s.stop()


async def wait_polled(client: Client, settings: Settings, locations: list[str], count: int) -> None:
    deadline = time.monotonic() + 180
    while not await polled_by(client, settings, locations, count):
        if time.monotonic() > deadline:
            raise RuntimeError("the workers never polled their queues")
        await asyncio.sleep(0.5)


async def zip_attempt(client: Client, wf: str) -> tuple[int, float, str] | None:
    """(attempt, server start time, worker identity) of the running zip step, if it runs."""
    desc = await client.get_workflow_handle(wf).describe()
    for p in desc.raw_description.pending_activities:
        if (
            p.activity_type.name == ZIP_ACTIVITY
            and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        ):
            started = p.last_started_time.ToDatetime(tzinfo=UTC).timestamp()
            return p.attempt, started, p.last_worker_identity
    return None


async def one_kill(
    client: Client,
    workers: Workers,
    settings: Settings,
    exp: Exposure,
    queues: Any,
    policy: Policy,
    after: float,
) -> dict[str, Any]:
    """One trial: start, kill the zip's worker mid-step, time the next attempt's start."""
    [outcome] = await start_exposures(
        client, settings.workflow_task_queue, [exp], queues, policy, restart_failed=True
    )
    wf = outcome.workflow_id
    deadline = time.monotonic() + 120
    while (running := await zip_attempt(client, wf)) is None or running[0] != 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{wf}: the zip step never started")
        await asyncio.sleep(0.05)
    _, first_start, identity = running
    await asyncio.sleep(max(0.0, first_start + after - time.time()))
    if await zip_attempt(client, wf) != running:
        raise RuntimeError(f"{wf}: the zip step ended within {after} s; raise --mib or lower --kill-after")
    pid = int(identity.split("@", 1)[0])
    killed = workers.kill(pid)
    while (again := await zip_attempt(client, wf)) is None or again[0] < 2:
        if time.monotonic() > deadline + 120:
            raise RuntimeError(f"{wf}: the zip step never ran again")
        await asyncio.sleep(0.05)
    attempt, restarted, new_identity = again
    await client.get_workflow_handle(wf).terminate("recovery benchmark: trial measured")
    return {
        "killed_pid": pid,
        "ran_on": identity,
        "ran_again_on": new_identity,
        "attempt": attempt,
        "kill_after_s": round(killed - first_start, 2),
        "recovery_s": round(restarted - killed, 2),
    }


async def heartbeat_cost(
    client: Client, settings: Settings, wf: str, count: int, base: Settings
) -> dict[str, Any]:
    """Temporal server CPU per heartbeat, sent by id for the running zip step of ``wf``."""
    rec = procs.recorded(base.state_dir, "temporal")
    assert rec is not None
    desc = await client.get_workflow_handle(wf).describe()
    [act] = [p for p in desc.raw_description.pending_activities if p.activity_type.name == ZIP_ACTIVITY]
    before = cpu_seconds(rec.pid)
    started = time.perf_counter()
    for _ in range(count):
        await client.workflow_service.record_activity_task_heartbeat_by_id(
            RecordActivityTaskHeartbeatByIdRequest(
                namespace=settings.temporal_namespace, workflow_id=wf, activity_id=act.activity_id
            )
        )
    seconds = time.perf_counter() - started
    per = (cpu_seconds(rec.pid) - before) / count
    return {
        "heartbeats": count,
        "seconds": round(seconds, 2),
        "server_cpu_ms_per_heartbeat": round(per * 1000, 3),
        # One heartbeat per 0.8 x timeout per running step reaches the server.
        "server_cpu_ms_per_s_per_100_running_steps": {
            str(t): round(100 * per * 1000 / (0.8 * t), 2) for t in (5, 10, 15, 30)
        },
    }


def prepared(base: Settings, root: Path, tag: str, count: int, size: int) -> tuple[Any, ...]:
    """A bucket, butlers, queues and locations of their own, and ``count`` seeded exposures."""
    from sqlmodel import Session

    from unembargo.models.tables import connect, step_queues

    source = source_settings(base, root, tag)
    settings = variant_settings(source, root / "v", tag)
    locations = prepare_variant(settings)
    print(f"seeding {count} exposures x 205 x {size // KIB} KiB", flush=True)
    exposures = seed(source, count, size)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        queues = step_queues(session)
    return source, settings, locations, exposures, queues


def kills(args: argparse.Namespace, base: Settings, root: Path, tag: str) -> dict[str, Any]:
    source, settings, locations, [exp], queues = prepared(base, root / "k", f"{tag}k", 1, args.mib * MIB)
    try:
        return asyncio.run(_kills(args, base, settings, locations, exp, queues))
    finally:
        drop_bucket(source)


async def _kills(
    args: argparse.Namespace,
    base: Settings,
    settings: Settings,
    locations: list[str],
    exp: Exposure,
    queues: Any,
) -> dict[str, Any]:
    policy = Policy(heartbeat_s=args.heartbeat)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    workers = Workers(settings, locations, 2)
    trials: list[dict[str, Any]] = []
    cost: dict[str, Any] = {}
    try:
        await wait_polled(client, settings, locations, 2)
        for i in range(args.kills):
            load = os.getloadavg()[0]
            trial = await one_kill(client, workers, settings, exp, queues, policy, args.kill_after)
            trial["load"] = round(load, 2)
            trials.append(trial)
            print(
                f"  kill {i + 1}: {trial['recovery_s']} s "
                f"(after {trial['kill_after_s']} s on {trial['ran_on']}, "
                f"again on {trial['ran_again_on']}, load {load:.1f})",
                flush=True,
            )
            # The replacement polls before the next kill, so two workers are always there.
            await wait_polled(client, settings, locations, 2)
            for final in settings.dest_root.rglob("*.zip"):
                final.unlink()
        if args.heartbeats:
            [outcome] = await start_exposures(
                client, settings.workflow_task_queue, [exp], queues, policy, restart_failed=True
            )
            while await zip_attempt(client, outcome.workflow_id) is None:
                await asyncio.sleep(0.05)
            cost = await heartbeat_cost(client, settings, outcome.workflow_id, args.heartbeats, base)
            await client.get_workflow_handle(outcome.workflow_id).terminate(
                "recovery benchmark: cost measured"
            )
    finally:
        workers.stop()
    recoveries = [t["recovery_s"] for t in trials]
    return {
        "heartbeat_timeout_s": args.heartbeat,
        "first_retry_s": STEP_RETRY.initial_interval.total_seconds() if STEP_RETRY.initial_interval else 0,
        "raw_mib": args.mib,
        "trials": trials,
        "recovery_median_s": round(statistics.median(recoveries), 2) if recoveries else None,
        "recovery_p95_s": round(p95(recoveries), 2) if recoveries else None,
        "recovery_max_s": max(recoveries) if recoveries else None,
        "moved_to_another_worker": all(t["ran_on"] != t["ran_again_on"] for t in trials),
        "heartbeat_cost": cost,
    }


def restart(args: argparse.Namespace, base: Settings, root: Path, tag: str) -> dict[str, Any]:
    """Temporal stopped and started under running exposures; when they move again."""
    count = args.restart_exposures
    source, settings, locations, exposures, queues = prepared(base, root / "r", f"{tag}r", count, 64 * KIB)
    try:
        return asyncio.run(_restart(args, base, settings, locations, exposures, queues))
    finally:
        drop_bucket(source)


async def _restart(
    args: argparse.Namespace,
    base: Settings,
    settings: Settings,
    locations: list[str],
    exposures: list[Exposure],
    queues: Any,
) -> dict[str, Any]:
    count = len(exposures)
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    workers = WorkerSet.start(settings, locations, 2)
    try:
        await wait_polled(client, settings, locations, 2)
        await start_exposures(
            client, settings.workflow_task_queue, exposures, queues, Policy(heartbeat_s=args.heartbeat)
        )
        ids = [workflow_id(e.instrument, e.obs_id) for e in exposures]
        await asyncio.sleep(args.restart_after)
        load = os.getloadavg()[0]
        stopped = time.time()
        temporal.stop(base)
        down_s = time.time() - stopped
        temporal.ensure(base)
        up = time.time()
        client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
        moving: dict[str, float] = {}
        done: dict[str, float] = {}
        deadline = time.monotonic() + 600
        while len(done) < len(ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ids) - len(done)} exposures did not finish after the restart")
            for wf in ids:
                if wf in done:
                    continue
                handle = client.get_workflow_handle(wf)
                history = await handle.fetch_history()
                after = [e for e in history.events if e.event_time.ToDatetime(tzinfo=UTC).timestamp() > up]
                if after and wf not in moving:
                    moving[wf] = after[0].event_time.ToDatetime(tzinfo=UTC).timestamp()
                ends = [
                    e
                    for e in history.events
                    if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
                ]
                if ends:
                    done[wf] = ends[0].event_time.ToDatetime(tzinfo=UTC).timestamp()
                elif (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                    raise RuntimeError(f"{wf} ended without completing after the restart")
            await asyncio.sleep(0.5)
        finished_before = [wf for wf in ids if done[wf] <= stopped]
        unfinished = [wf for wf in ids if wf not in finished_before]
    finally:
        workers.stop()
    return {
        "exposures": count,
        "restart_after_s": args.restart_after,
        "load": round(load, 2),
        "stop_s": round(down_s, 2),
        "stop_to_answering_s": round(up - stopped, 2),
        "unfinished_at_stop": len(unfinished),
        "stop_to_all_moving_s": round(max(moving[wf] for wf in unfinished) - stopped, 2)
        if unfinished
        else None,
        "stop_to_all_done_s": round(max(done.values()) - stopped, 2),
    }


def table(result: dict[str, Any]) -> str:
    lines = ["| measure | value | target |", "|---|---:|---|"]
    k = result.get("kills")
    if k:
        met = "met" if k["recovery_p95_s"] < TARGET_S else "missed"
        lines += [
            f"| heartbeat timeout / first retry (s) | {k['heartbeat_timeout_s']:g} / {k['first_retry_s']:g} "
            "| |",
            f"| kill to next attempt started, median (s), {len(k['trials'])} kills "
            f"| {k['recovery_median_s']} | |",
            f"| kill to next attempt started, p95 (s) | {k['recovery_p95_s']} | < {TARGET_S:g} s: {met} |",
            f"| kill to next attempt started, max (s) | {k['recovery_max_s']} | |",
            f"| ran again on another worker, every time | {k['moved_to_another_worker']} | |",
        ]
        cost = k.get("heartbeat_cost")
        if cost:
            per = cost["server_cpu_ms_per_s_per_100_running_steps"]
            lines += [
                f"| Temporal CPU per heartbeat (ms) | {cost['server_cpu_ms_per_heartbeat']} | |",
                "| Temporal CPU per s per 100 running steps (ms), timeout 30 / 15 / 10 / 5 s "
                f"| {per['30']} / {per['15']} / {per['10']} / {per['5']} | |",
            ]
    r = result.get("restart")
    if r:
        lines += [
            f"| Temporal restart: stop to answering (s) | {r['stop_to_answering_s']} | |",
            f"| Temporal restart: stop to all {r['unfinished_at_stop']} unfinished exposures moving (s) "
            f"| {r['stop_to_all_moving_s']} | |",
            f"| Temporal restart: stop to all {r['exposures']} done (s) | {r['stop_to_all_done_s']} | |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--mib", type=int, default=4, help="raw size of the exposure killed mid-zip")
    parser.add_argument("--kill-after", type=float, default=1.0, help="seconds into the zip step")
    parser.add_argument(
        "--heartbeat", type=float, default=Settings().heartbeat_timeout.total_seconds(), help="seconds"
    )
    parser.add_argument("--heartbeats", type=int, default=2000, help="heartbeats sent to time their cost")
    parser.add_argument("--restarts", type=int, default=1, choices=(0, 1))
    parser.add_argument("--restart-exposures", type=int, default=6)
    parser.add_argument("--restart-after", type=float, default=8.0, help="seconds after the starts")
    args = parser.parse_args()
    base = stack_settings("bench")
    bring_up(base, "bench")
    tag = uuid.uuid4().hex[:8]
    root = base.state_dir.resolve() / "bench" / "recovery" / tag
    result: dict[str, Any] = {
        "argv": sys.argv[1:],
        "cpus": os.cpu_count(),
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
    }
    if args.kills:
        result["kills"] = kills(args, base, root, tag)
    if args.restarts:
        result["restart"] = restart(args, base, root, tag)
    result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    print(table(result))
    print(f"results: {write_results('recovery', result).relative_to(REPO)}")


if __name__ == "__main__":
    main()
