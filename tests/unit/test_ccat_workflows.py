"""The CCAT flow's workflows (workflows/ccat.py) on Temporal's time-skipping test server.

Every activity is a stub under its real name over a fake world of two archive sites: it
logs each call, so a test can tell that a bundle was sent once, that a failed unpack was
retried without sending again, that a corrupt package was sent again and never archived,
and that no deletion started before every archive had its copy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from unembargo.models import ccat as c
from unembargo.workflows.ccat import (
    CcatDeletionWorkflow,
    CcatPackageWorkflow,
    CcatStageWorkflow,
    CcatTransferWorkflow,
)

RESULT_TIMEOUT = timedelta(seconds=60)
POLICY = c.CcatPolicy(heartbeat_s=30, bundle_wait_s=5, max_retransfers=2)
OPERATIONS = (
    c.PACKAGE_CREATION,
    c.TRANSFER_PACKAGE_CREATION,
    c.TRANSFER,
    c.UNPACKING,
    c.ARCHIVE_TRANSFER,
    c.STAGING,
    c.DELETION,
)


def place(queue: str, location: str, site: str) -> c.Place:
    # Every operation of every location on the test's one queue: routing is the stubs' part.
    return c.Place(location, site, {op: queue for op in OPERATIONS})


@dataclass
class World:
    """What the stubs were asked, in order, and how they misbehave."""

    queue: str
    bundle_size: int = 2
    calls: list[tuple[str, str]] = field(default_factory=list)
    # Unpack attempts that fail transiently, and unpacks that find a corrupt package.
    unpack_errors: int = 0
    unpack_mismatches: int = 0
    refuse: set[str] = field(default_factory=set)
    bundles: dict[str, list[str]] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    # Bundle names (and so transfer workflow ids) of this test's own.
    buffer: str = field(default_factory=lambda: f"buffer-{uuid.uuid4().hex[:8]}")

    def count(self, activity_name: str) -> int:
        return sum(1 for name, _ in self.calls if name == activity_name)

    def sites(self) -> list[c.ArchiveSite]:
        return [
            c.ArchiveSite(s, place(self.queue, f"{s}-buffer", s), place(self.queue, f"{s}-lta", s))
            for s in ("cologne", "cornell")
        ]

    def activities(self) -> list:
        w = self

        def log(spec: c.StepSpec, what: str) -> None:
            w.calls.append((spec.activity, what))

        @activity.defn(name=c.PACKAGE_STEPS[c.PackageStep.ROUTE].activity)
        async def route_buffer(inp: c.RouteBufferInput) -> c.RouteBufferReceipt:
            log(c.PACKAGE_STEPS[c.PackageStep.ROUTE], inp.package)
            return c.RouteBufferReceipt(place(w.queue, w.buffer, "telescope"))

        @activity.defn(name=c.PACKAGE_STEPS[c.PackageStep.PACKAGE].activity)
        async def package(inp: c.PackageStepInput) -> c.PackageReceipt:
            log(c.PACKAGE_STEPS[c.PackageStep.PACKAGE], f"{inp.package}@{inp.buffer}")
            return c.PackageReceipt(inp.package, 3, 300, "sha-" + inp.package)

        @activity.defn(name=c.PACKAGE_STEPS[c.PackageStep.BUNDLE].activity)
        async def bundle(inp: c.BundleInput) -> c.BundleReceipt:
            log(c.PACKAGE_STEPS[c.PackageStep.BUNDLE], inp.package)
            for name, members in w.bundles.items():
                if inp.package in members:
                    return c.BundleReceipt(name, len(members) >= w.bundle_size)
            open_ = [n for n, m in w.bundles.items() if len(m) < w.bundle_size and n not in w.closed]
            name = open_[0] if open_ else c.transfer_name(inp.buffer, len(w.bundles) + 1)
            w.bundles.setdefault(name, []).append(inp.package)
            return c.BundleReceipt(name, len(w.bundles[name]) >= w.bundle_size)

        @activity.defn(name=c.TRANSFER_STEPS[c.TransferStep.CLOSE].activity)
        async def close(inp: c.CloseInput) -> c.CloseReceipt:
            log(c.TRANSFER_STEPS[c.TransferStep.CLOSE], inp.transfer)
            w.closed.add(inp.transfer)
            members = w.bundles[inp.transfer]
            refs = [c.PackageRef(p, 300, "sha-" + p, "telescope-source") for p in members]
            return c.CloseReceipt(
                300 * len(refs),
                "sha-" + inp.transfer,
                refs,
                {"telescope-source": place(w.queue, "telescope-source", "telescope")},
            )

        @activity.defn(name=c.TRANSFER_STEPS[c.TransferStep.ROUTE].activity)
        async def route_archive(inp: c.RouteArchiveInput) -> c.RouteArchiveReceipt:
            log(c.TRANSFER_STEPS[c.TransferStep.ROUTE], inp.transfer)
            first, second = w.sites()
            return c.RouteArchiveReceipt(first, [second])

        @activity.defn(name=c.TRANSFER_STEPS[c.TransferStep.TRANSFER].activity)
        async def transfer(inp: c.TransferStepInput) -> c.TransferReceipt:
            log(
                c.TRANSFER_STEPS[c.TransferStep.TRANSFER],
                f"{inp.transfer}->{inp.destination} fresh={inp.fresh}",
            )
            return c.TransferReceipt(inp.size, 0.1)

        @activity.defn(name=c.TRANSFER_STEPS[c.TransferStep.UNPACK].activity)
        async def unpack(inp: c.UnpackInput) -> c.UnpackReceipt:
            log(c.TRANSFER_STEPS[c.TransferStep.UNPACK], inp.transfer)
            if w.unpack_errors:
                w.unpack_errors -= 1
                raise RuntimeError("disk busy")
            if w.unpack_mismatches:
                w.unpack_mismatches -= 1
                raise ApplicationError("package p1: sha256 differs", type=c.CHECKSUM_MISMATCH)
            return c.UnpackReceipt(len(inp.packages))

        @activity.defn(name=c.TRANSFER_STEPS[c.TransferStep.ARCHIVE].activity)
        async def archive(inp: c.ArchiveInput) -> c.ArchiveReceipt:
            log(c.TRANSFER_STEPS[c.TransferStep.ARCHIVE], inp.archive)
            return c.ArchiveReceipt(len(inp.packages))

        @activity.defn(name=c.TRANSFER_STEPS[c.TransferStep.REPLICATE].activity)
        async def replicate(inp: c.ReplicateInput) -> c.ArchiveReceipt:
            log(c.TRANSFER_STEPS[c.TransferStep.REPLICATE], f"{inp.source}->{inp.destination}")
            return c.ArchiveReceipt(len(inp.packages))

        @activity.defn(name=c.DELETION_STEPS[c.DeletionStep.DELETE].activity)
        async def delete(inp: c.DeleteStepInput) -> c.DeleteReceipt:
            key = f"{inp.kind}:{inp.unit}@{inp.location}"
            log(c.DELETION_STEPS[c.DeletionStep.DELETE], key)
            if key in w.refuse:
                raise ApplicationError("not archived", type="DeletionRefused", non_retryable=True)
            return c.DeleteReceipt(1)

        @activity.defn(name=c.STAGE_STEPS[c.StageStep.STAGE].activity)
        async def stage(inp: c.StageStepInput) -> c.StageReceipt:
            log(c.STAGE_STEPS[c.StageStep.STAGE], f"{inp.package}->{inp.location}")
            return c.StageReceipt("cologne-lta", 3, 300)

        return [
            route_buffer,
            package,
            bundle,
            close,
            route_archive,
            transfer,
            unpack,
            archive,
            replicate,
            delete,
            stage,
        ]


WORKFLOWS = [CcatPackageWorkflow, CcatTransferWorkflow, CcatDeletionWorkflow, CcatStageWorkflow]


def worker(env: WorkflowEnvironment, world: World) -> Worker:
    return Worker(env.client, task_queue=world.queue, workflows=WORKFLOWS, activities=world.activities())


async def run_packages(
    env: WorkflowEnvironment, world: World, packages: list[str], policy: c.CcatPolicy = POLICY
) -> list[c.TransferResult]:
    """Package each; then wait for every transfer workflow they started."""
    source = place(world.queue, "telescope-source", "telescope")
    for p in packages:
        await env.client.execute_workflow(
            c.PACKAGE_WORKFLOW,
            c.PackageInput(p, source, policy),
            id=f"{c.package_workflow_id(p)}-{uuid.uuid4().hex[:6]}",
            task_queue=world.queue,
            result_type=c.PackageReceipt,
        )
    results = []
    for name in world.bundles:
        handle = env.client.get_workflow_handle(c.transfer_workflow_id(name), result_type=c.TransferResult)
        results.append(await handle.result(rpc_timeout=RESULT_TIMEOUT))
    return results


def packages(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"obs-{tag}-{i}" for i in range(n)]


async def test_two_bundles_go_out_once_each_archived_everywhere_before_any_deletion(env, queue):
    world = World(queue)
    async with worker(env, world):
        results = await run_packages(env, world, packages(3))
    n = len(world.bundles)
    assert sum(r.packages for r in results) == 3 and n >= 2 and world.closed == set(world.bundles)
    assert world.count("ccat_transfer") == n and world.count("ccat_unpack") == n
    assert world.count("ccat_archive") == n and world.count("ccat_replicate") == n
    # Two bundle copies per bundle, three copies per package (files at SOURCE, both buffers).
    assert world.count("ccat_delete") == 2 * n + 3 * 3
    assert all(r.destination == "cologne" and r.replicas == ["cornell"] and not r.refused for r in results)
    for bundle in world.bundles:
        order = [n for n, what in world.calls if bundle in what or n in ("ccat_archive", "ccat_replicate")]
        assert order.index("ccat_delete") > order.index("ccat_replicate"), "deleted before replicated"
    deletions = Counter(what for n, what in world.calls if n == "ccat_delete")
    assert max(deletions.values()) == 1, "a copy was deleted twice"


async def test_a_failed_unpack_is_retried_without_sending_again(env, queue):
    # One failure: its retry waits the policy's real first backoff (1 s), time skipping or not.
    world = World(queue, bundle_size=1, unpack_errors=1)
    async with worker(env, world):
        [result] = await run_packages(env, world, packages(1))
    assert world.count("ccat_unpack") == 2 and world.count("ccat_transfer") == 1
    assert result.deletions == 2 + 3


async def test_a_corrupt_package_is_sent_again_and_archived_only_once_verified(env, queue):
    world = World(queue, bundle_size=1, unpack_mismatches=1)
    async with worker(env, world):
        await run_packages(env, world, packages(1))
    sends = [what for n, what in world.calls if n == "ccat_transfer"]
    assert len(sends) == 2 and sends[1].endswith("fresh=True")
    assert world.count("ccat_archive") == 1
    names = [n for n, _ in world.calls]
    assert names.index("ccat_archive") > max(i for i, n in enumerate(names) if n == "ccat_unpack")


async def test_a_bundle_corrupt_every_time_fails_by_name_and_is_never_archived_nor_deleted(env, queue):
    world = World(queue, bundle_size=1, unpack_mismatches=99)
    async with worker(env, world):
        with pytest.raises(WorkflowFailureError) as failed:
            await run_packages(env, world, packages(1))
    assert world.count("ccat_transfer") == POLICY.max_retransfers + 1
    assert world.count("ccat_archive") == 0 and world.count("ccat_delete") == 0
    cause = failed.value.cause
    assert isinstance(cause, Exception) and c.CHECKSUM_MISMATCH in repr(cause.__cause__)


async def test_a_refused_deletion_keeps_its_copy_and_is_named_in_the_result(env, queue):
    [p] = packages(1)
    world = World(queue, bundle_size=1, refuse={f"{c.FILE_SET}:{p}@telescope-source"})
    async with worker(env, world):
        [result] = await run_packages(env, world, [p])
    assert result.refused == [c.deletion_workflow_id(c.FILE_SET, p, "telescope-source")]
    assert result.deletions == 4


async def test_a_full_bundle_is_sent_without_waiting_for_the_bundle_timer(env, queue):
    world = World(queue, bundle_size=2)
    async with worker(env, world):
        # Time does not skip here: an hour's bundle timer would be felt; the "full" signal closes it first.
        with env.auto_time_skipping_disabled():
            policy = c.CcatPolicy(bundle_wait_s=3600)
            [result] = await asyncio.wait_for(run_packages(env, world, packages(2), policy), timeout=30)
    assert result.packages == 2


async def test_staging_copies_from_an_archive_to_the_processing_location(env, queue):
    world = World(queue)
    async with worker(env, world):
        got = await env.client.execute_workflow(
            c.STAGE_WORKFLOW,
            c.StageInput("obs-1", place(queue, "proc", "cologne")),
            id=f"stage-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
            result_type=c.StageReceipt,
        )
    assert got.archive == "cologne-lta" and world.calls == [("ccat_stage", "obs-1->proc")]
