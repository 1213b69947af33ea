"""The CCAT flow's directory watch: the workflow on Temporal's time-skipping test server with
a stub scan (and stub package steps) under the real names, and the real scan activity over
real folders and an SQLite database.

The workflow starts the package workflow of each observation a scan reports ready exactly
once, carries the sizes each scan saw into the next (and across continue-as-new), and rides
out a scan that fails and a worker that is gone for a while. The scan files a folder only
once every file in it is older than the minimum age and kept its size since the scan before,
never a temporary name, and a second scan files nothing new.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlmodel import Session, select
from temporalio import activity, workflow
from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.activities.ccat import CcatActivities
from unembargo.activities.context import Resources
from unembargo.client.ccat import start_watch
from unembargo.devstack.ccat_sites import CcatSites, add_sites
from unembargo.models import ccat as c
from unembargo.models.ccat_tables import PhysicalCopy, RawDataFile, RawDataPackage
from unembargo.models.settings import Settings
from unembargo.workflows.ccat import CcatWatchWorkflow

SCAN = c.WATCH_STEPS[c.WatchStep.SCAN].activity
POLL_S = 10.0
OPERATIONS = (c.PACKAGE_CREATION, c.TRANSFER_PACKAGE_CREATION, c.MONITORING)


# ---------------------------------------------------------------------------- the workflow


@dataclass
class Script:
    """What the stub scan answers, scan by scan (the last answer again once they run out),
    and what it and the package steps were asked."""

    queue: str
    answers: list[c.ScanSourceReceipt]
    failures: int = 0
    scans: list[c.ScanSourceInput] = field(default_factory=list)
    packaged: list[str] = field(default_factory=list)

    def activities(self) -> list:
        s = self

        @activity.defn(name=SCAN)
        async def scan(inp: c.ScanSourceInput) -> c.ScanSourceReceipt:
            if s.failures:
                s.failures -= 1
                raise RuntimeError("source disk not mounted")
            s.scans.append(inp)
            return s.answers[min(len(s.scans), len(s.answers)) - 1]

        @activity.defn(name=c.PACKAGE_STEPS[c.PackageStep.PACKAGE].activity)
        async def package(inp: c.PackageStepInput) -> c.PackageReceipt:
            s.packaged.append(inp.package)
            return c.PackageReceipt(inp.package, 1, 10, "sha")

        return [scan, package]


@workflow.defn(name=c.PACKAGE_WORKFLOW, sandboxed=False)
class StubPackage:
    """A package workflow that only runs the package step (the rest is not this test's part)."""

    @workflow.run
    async def run(self, inp: c.PackageInput) -> c.PackageReceipt:
        return await workflow.execute_activity(
            c.PACKAGE_STEPS[c.PackageStep.PACKAGE].activity,
            c.PackageStepInput(inp.package, inp.source.location, "buffer"),
            result_type=c.PackageReceipt,
            task_queue=inp.source.queue(c.PACKAGE_CREATION),
            start_to_close_timeout=timedelta(seconds=10),
        )


def place(queue: str, location: str) -> c.Place:
    return c.Place(location, "telescope", {op: queue for op in OPERATIONS})


def worker(env: WorkflowEnvironment, script: Script) -> Worker:
    return Worker(
        env.client,
        task_queue=script.queue,
        workflows=[CcatWatchWorkflow, StubPackage],
        activities=script.activities(),
    )


async def start(env: WorkflowEnvironment, script: Script, scans_per_run: int = 500) -> WorkflowHandle:
    source = f"src-{uuid.uuid4().hex[:8]}"
    inp = c.WatchInput(place(script.queue, source), c.CcatPolicy(), POLL_S, 30.0, scans_per_run)
    return await env.client.start_workflow(
        c.WATCH_WORKFLOW, inp, id=c.watch_workflow_id(source), task_queue=script.queue
    )


async def scans(env: WorkflowEnvironment, script: Script, n: int) -> None:
    """Let time pass, poll by poll, until the watch has scanned ``n`` times."""
    for _ in range(10 * n):
        if len(script.scans) >= n:
            return
        await env.sleep(POLL_S)
    raise AssertionError(f"{len(script.scans)} scans, not {n}")


def obs(tag: str, i: int) -> str:
    return f"obs-{tag}-{i}"


async def test_each_ready_observation_is_packaged_once_and_sizes_go_into_the_next_scan(env, queue):
    t = uuid.uuid4().hex[:6]
    answers = [
        c.ScanSourceReceipt(waiting=1, sizes={"a/1.fits": 5}),
        c.ScanSourceReceipt(filed=[obs(t, 1)], ready=[obs(t, 1)], waiting=1, sizes={"b/1.fits": 7}),
        # Filed, not packaged yet: ready again, scan after scan, across continue-as-new.
        c.ScanSourceReceipt(filed=[obs(t, 2)], ready=[obs(t, 1), obs(t, 2)], sizes={"c/1.fits": 9}),
        c.ScanSourceReceipt(ready=[obs(t, 1), obs(t, 2)]),
    ]
    script = Script(queue, answers)
    async with worker(env, script):
        handle = await start(env, script, scans_per_run=3)
        await scans(env, script, 6)
        await handle.terminate()
    assert sorted(script.packaged) == [obs(t, 1), obs(t, 2)], "an observation was packaged twice"
    sizes = [s.sizes for s in script.scans]
    # The fourth scan is the first of the next run: the sizes came across continue-as-new.
    assert sizes[:5] == [{}, {"a/1.fits": 5}, {"b/1.fits": 7}, {"c/1.fits": 9}, {}]
    assert all(s.min_age_s == 30.0 for s in script.scans)
    desc = await handle.describe()
    assert desc.run_id != handle.first_execution_run_id, "never continued as new"


async def test_the_watch_rides_out_failed_scans_and_then_catches_up(env, queue):
    t = uuid.uuid4().hex[:6]
    # The source disk is unreachable for the first scans: retried with backoff, never failed.
    script = Script(queue, [c.ScanSourceReceipt()], failures=2)
    async with worker(env, script):
        handle = await start(env, script)
        await scans(env, script, 2)
        # Meanwhile an observation folder was written and completed: the next scan files it.
        script.answers = [c.ScanSourceReceipt(filed=[obs(t, 1)], ready=[obs(t, 1)])]
        await scans(env, script, 4)
        await handle.terminate()
    assert script.failures == 0 and script.packaged == [obs(t, 1)]


# ---------------------------------------------------------------------------- the scan activity


@dataclass
class Source:
    sites: CcatSites
    resources: Resources
    acts: CcatActivities

    @property
    def root(self) -> Path:
        return self.sites.root / self.sites.source

    def scan(self, sizes: dict[str, int], min_age_s: float = 30.0) -> c.ScanSourceReceipt:
        inp = c.ScanSourceInput(self.sites.source, min_age_s, sizes)
        return ActivityEnvironment().run(self.acts.ccat_scan_source, inp)

    def write(self, relpath: str, size: int, age_s: float = 120.0) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        when = time.time() - age_s
        os.utime(path, (when, when))
        return path

    def filed(self) -> list[str]:
        with Session(self.resources.engine) as s:
            return sorted(r.id for r in s.exec(select(RawDataFile)).all())


@pytest.fixture
def source(tmp_path: Path) -> Source:
    settings = Settings(database_url=SecretStr(f"sqlite:///{tmp_path / 'ccat.db'}"), state_dir=tmp_path)
    resources = Resources(settings)
    with Session(resources.engine) as s:
        sites = add_sites(s, tmp_path / "sites", tag=uuid.uuid4().hex[:6])
    return Source(sites, resources, CcatActivities(resources))


def test_a_settled_folder_is_filed_once_with_verified_copies_and_a_second_scan_files_nothing(source):
    source.write("obs-1/a.fits", 1000)
    source.write("obs-1/b.fits", 2000)
    first = source.scan({})
    # Old enough, but not seen before: its size may still change.
    assert (
        first.filed == []
        and first.waiting == 1
        and first.sizes == {"obs-1/a.fits": 1000, "obs-1/b.fits": 2000}
    )
    second = source.scan(first.sizes)
    assert second.filed == ["obs-1"] and second.ready == ["obs-1"] and second.sizes == {}
    assert source.filed() == ["obs-1/a.fits", "obs-1/b.fits"]
    with Session(source.resources.engine) as s:
        copies = s.exec(select(PhysicalCopy)).all()
        assert {(r.unit, r.size, r.verified) for r in copies} == {
            ("obs-1/a.fits", 1000, True),
            ("obs-1/b.fits", 2000, True),
        }
    third = source.scan(second.sizes)
    # Filed, not packaged yet: ready (its package workflow may not have started), not filed again.
    assert (
        third.filed == [] and third.ready == ["obs-1"] and source.filed() == ["obs-1/a.fits", "obs-1/b.fits"]
    )
    with Session(source.resources.engine) as s:
        s.add(
            RawDataPackage(
                name="obs-1",
                observation="obs-1",
                source=source.sites.source,
                files=2,
                size=3000,
                checksum="x",
            )
        )
        s.commit()
    assert source.scan({}) == c.ScanSourceReceipt()


def test_young_growing_and_temporary_files_hold_their_folder(source):
    source.write("young/a.fits", 100, age_s=1)
    source.write("growing/a.fits", 100)
    source.write("writing/a.fits", 100)
    source.write("writing/.b.fits.Xy12Ab", 100)
    source.write("ready/a.fits", 100)
    first = source.scan({})
    source.write("growing/a.fits", 200)  # appended to since the first scan
    second = source.scan(first.sizes)
    assert second.filed == ["ready"] and second.waiting == 3
    assert second.sizes["young/a.fits"] == 100 and second.sizes["growing/a.fits"] == 200
    # The temporary name is never noted, nor filed.
    assert not any(".b.fits" in k for k in second.sizes)
    os.rename(source.root / "writing/.b.fits.Xy12Ab", source.root / "writing/b.fits")
    os.utime(source.root / "writing/b.fits", (time.time() - 120, time.time() - 120))
    third = source.scan(second.sizes)
    assert third.filed == ["growing"], "the renamed file was not seen before: its folder waits"
    fourth = source.scan(third.sizes)
    assert fourth.filed == ["writing"]
    assert source.filed() == ["growing/a.fits", "ready/a.fits", "writing/a.fits", "writing/b.fits"]
    assert source.scan(fourth.sizes, min_age_s=0).filed == ["young"]


def test_a_folder_with_no_valid_observation_name_is_reported_and_never_filed(source):
    source.write("bad name/a.fits", 10)
    source.write(".hidden/a.fits", 10)
    first = source.scan({})
    assert first.invalid == ["bad name"] and first.waiting == 0
    assert source.scan(first.sizes).filed == [] and source.filed() == []


async def test_the_watch_of_a_source_has_one_id_and_starts_once(env, queue, source):
    with Session(source.resources.engine) as s:
        got = [await start_watch(env.client, s, queue, source.sites.source, c.CcatPolicy()) for _ in range(2)]
    wid = c.watch_workflow_id(source.sites.source)
    assert got == [(wid, "started"), (wid, "running")]
    await env.client.get_workflow_handle(wid).terminate()
