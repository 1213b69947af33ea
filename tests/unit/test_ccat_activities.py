"""The CCAT flow's real activities over real folders and an SQLite database (no Temporal:
each runs in Temporal's activity test environment).

They prove the copy rows say what is really on each disk, that each step done twice
does nothing the second time, that a byte changed in transit is caught on arrival and
never archived, that the round-robin choice survives a new process, that work fails
over to the secondary buffer, and that the deletion activity itself refuses, at the
moment it deletes, whatever copy would leave fewer verified archive copies than the rule.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

from unembargo.activities.ccat import CcatActivities
from unembargo.activities.context import Resources
from unembargo.client.ccat import file_observation, package_view
from unembargo.devstack.ccat_sites import CcatSites, add_sites
from unembargo.models import ccat as c
from unembargo.models.ccat_tables import CopyState, PackageState, PhysicalCopy, place
from unembargo.models.errors import ChecksumMismatch, DeletionRefused
from unembargo.models.locations import DataLocation, get_location
from unembargo.models.settings import Settings
from unembargo.models.tables import Effect


@dataclass
class World:
    sites: CcatSites
    resources: Resources
    acts: CcatActivities

    def run(self, fn, arg):
        return ActivityEnvironment().run(fn, arg)

    def session(self) -> Session:
        return Session(self.resources.engine)

    def path(self, location: str, relpath: str) -> Path:
        with self.session() as s:
            return Path(get_location(s, location).path or "") / relpath


def new_world(tmp_path: Path, **ccat: int) -> World:
    settings = Settings(database_url=SecretStr(f"sqlite:///{tmp_path / 'ccat.db'}"), state_dir=tmp_path)
    resources = Resources(settings)
    with Session(resources.engine) as s:
        sites = add_sites(s, tmp_path / "sites", tag=uuid.uuid4().hex[:6])
    return World(sites, resources, CcatActivities(resources, c.CcatSettings(**ccat)))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return new_world(tmp_path)


def observe(world: World, obs: str, n: int = 3, size: int = 2000) -> None:
    folder = Path(world.sites.root) / world.sites.source / obs
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        path = folder / f"{obs}_m{i}.fits"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    with world.session() as s:
        file_observation(s, world.sites.source, obs, paths, instrument_module=f"m{n}")


def package(world: World, obs: str) -> c.BundleReceipt:
    a = world.acts
    route = world.run(a.ccat_route_buffer, c.RouteBufferInput(obs, world.sites.source))
    world.run(a.ccat_package, c.PackageStepInput(obs, world.sites.source, route.buffer.location))
    return world.run(a.ccat_bundle, c.BundleInput(obs, route.buffer.location))


def transfer(world: World, name: str) -> tuple[c.CloseReceipt, c.RouteArchiveReceipt]:
    a, buffer = world.acts, world.sites.buffers[0]
    closed = world.run(a.ccat_close_bundle, c.CloseInput(name, buffer))
    route = world.run(a.ccat_route_archive, c.RouteArchiveInput(name))
    dest = route.destination
    world.run(
        a.ccat_transfer, c.TransferStepInput(name, buffer, dest.buffer.location, closed.size, closed.checksum)
    )
    world.run(a.ccat_unpack, c.UnpackInput(name, dest.buffer.location, closed.packages))
    world.run(
        a.ccat_archive, c.ArchiveInput(name, dest.buffer.location, dest.archive.location, closed.packages)
    )
    for other in route.others:
        world.run(
            a.ccat_replicate, c.ReplicateInput(dest.archive.location, other.archive.location, closed.packages)
        )
    return closed, route


def copies(world: World, unit: str) -> dict[str, PhysicalCopy]:
    with world.session() as s:
        rows = s.exec(select(PhysicalCopy).where(PhysicalCopy.unit == unit)).all()
    return {r.location: r for r in rows}


def effects(world: World) -> list[tuple[str, str, str]]:
    with world.session() as s:
        return [(e.obs_id, e.step, e.action) for e in s.exec(select(Effect))]


def test_every_package_reaches_both_archives_and_the_rows_match_the_disks(world):
    for obs in ("obs-1", "obs-2", "obs-3"):
        observe(world, obs)
        package(world, obs)
    closed, route = transfer(world, c.transfer_name(world.sites.buffers[0], 1))
    assert [p.name for p in closed.packages] == ["obs-1", "obs-2", "obs-3"]
    lta = [a.archive for a in world.sites.archives]
    for p in closed.packages:
        rows = copies(world, p.name)
        for loc in (world.sites.buffers[0], route.destination.buffer.location, *lta):
            row = rows[loc]
            path = world.path(loc, row.relpath)
            assert row.verified and row.state == CopyState.PRESENT and path.stat().st_size == row.size
            assert row.checksum == p.checksum
        sidecar = world.path(lta[1], c.package_relpath(p.name) + c.SIDECAR_SUFFIX)
        assert p.name in sidecar.read_text()
        view = package_view(world.session(), p.name)
        assert view is not None and view.state == PackageState.ARCHIVED
        assert len(view.verified_archives) == 2


def test_each_step_done_again_does_nothing(world):
    observe(world, "obs-1")
    bundled = package(world, "obs-1")
    transfer(world, bundled.transfer)
    before = effects(world)
    assert package(world, "obs-1") == bundled
    transfer(world, bundled.transfer)
    assert effects(world) == before, "a step acted again"


def test_a_byte_changed_in_transit_is_caught_on_arrival_and_sent_again(world, tmp_path, monkeypatch):
    observe(world, "obs-1")
    name = package(world, "obs-1").transfer
    a, buffer = world.acts, world.sites.buffers[0]
    closed = world.run(a.ccat_close_bundle, c.CloseInput(name, buffer))
    dest = world.run(a.ccat_route_archive, c.RouteArchiveInput(name)).destination
    monkeypatch.setenv("UNEMBARGO_CORRUPT_AT", "transfer")
    monkeypatch.setenv("UNEMBARGO_CRASH_MARKERS", str(tmp_path))
    send = c.TransferStepInput(name, buffer, dest.buffer.location, closed.size, closed.checksum)
    with pytest.raises(ChecksumMismatch, match="removed, copying again"):
        world.run(a.ccat_transfer, send)
    assert not world.path(dest.buffer.location, c.transfer_relpath(name)).exists()
    assert dest.buffer.location not in copies(world, name)
    # The retry (the marker makes the corruption fire once) arrives intact.
    assert not world.run(a.ccat_transfer, send).already
    assert copies(world, name)[dest.buffer.location].verified


def test_a_corrupt_package_inside_a_bundle_is_never_archived(world):
    observe(world, "obs-1")
    name = package(world, "obs-1").transfer
    a, buffer = world.acts, world.sites.buffers[0]
    closed = world.run(a.ccat_close_bundle, c.CloseInput(name, buffer))
    dest = world.run(a.ccat_route_archive, c.RouteArchiveInput(name)).destination
    world.run(
        a.ccat_transfer, c.TransferStepInput(name, buffer, dest.buffer.location, closed.size, closed.checksum)
    )
    wrong = [c.PackageRef(p.name, p.size, "0" * 64, p.source) for p in closed.packages]
    with pytest.raises(ChecksumMismatch):
        world.run(a.ccat_unpack, c.UnpackInput(name, dest.buffer.location, wrong))
    assert dest.buffer.location not in copies(world, "obs-1")
    assert not world.path(dest.buffer.location, c.package_relpath("obs-1")).exists()


def test_the_round_robin_alternates_and_a_new_process_keeps_each_choice(tmp_path):
    world = new_world(tmp_path, bundle_limit_bytes=1)
    chosen = []
    for i in range(4):
        observe(world, f"obs-{i}")
        name = package(world, f"obs-{i}").transfer
        world.run(world.acts.ccat_close_bundle, c.CloseInput(name, world.sites.buffers[0]))
        # A fresh worker process each time: nothing of the choice lives in memory.
        acts = CcatActivities(Resources(world.resources.settings))
        chosen.append(world.run(acts.ccat_route_archive, c.RouteArchiveInput(name)).destination.site)
        again = world.run(acts.ccat_route_archive, c.RouteArchiveInput(name)).destination.site
        assert again == chosen[-1]
    first, second = (a.site for a in world.sites.archives)
    assert chosen == [first, second, first, second]


def test_new_work_fails_over_to_the_secondary_buffer_and_routed_work_stays(world):
    primary, secondary = world.sites.buffers
    observe(world, "obs-1")
    observe(world, "obs-2")
    a = world.acts
    assert (
        world.run(a.ccat_route_buffer, c.RouteBufferInput("obs-1", world.sites.source)).buffer.location
        == primary
    )
    world.run(a.ccat_package, c.PackageStepInput("obs-1", world.sites.source, primary))
    with world.session() as s:
        loc = get_location(s, primary)
        loc.active = False
        s.add(loc)
        s.commit()
    got = world.run(a.ccat_route_buffer, c.RouteBufferInput("obs-2", world.sites.source))
    assert got.buffer.location == secondary and not got.already
    # A package already at the primary stays there: its rerun is routed where its bytes are.
    kept = world.run(a.ccat_route_buffer, c.RouteBufferInput("obs-1", world.sites.source))
    assert kept.buffer.location == primary and kept.already


def delete(world: World, kind: str, unit: str, location: str) -> c.DeleteReceipt:
    return world.run(world.acts.ccat_delete, c.DeleteStepInput(kind, unit, location))


def test_nothing_is_deleted_from_a_source_or_buffer_before_it_is_archived(world):
    observe(world, "obs-1")
    name = package(world, "obs-1").transfer
    for kind, unit, loc in (
        (c.FILE_SET, "obs-1", world.sites.source),
        (c.PACKAGE, "obs-1", world.sites.buffers[0]),
        (c.BUNDLE, name, world.sites.buffers[0]),
    ):
        with pytest.raises(DeletionRefused, match="not archived"):
            delete(world, kind, unit, loc)
    assert all(r.state == CopyState.PRESENT for r in copies(world, "obs-1").values())
    assert world.path(world.sites.buffers[0], c.package_relpath("obs-1")).exists()


def test_after_archiving_deletion_frees_source_and_buffers_once(world):
    observe(world, "obs-1")
    name = package(world, "obs-1").transfer
    _, route = transfer(world, name)
    source_files = list((Path(world.sites.root) / world.sites.source / "obs-1").iterdir())
    assert delete(world, c.FILE_SET, "obs-1", world.sites.source).deleted == 3
    assert not any(p.exists() for p in source_files)
    for loc in (world.sites.buffers[0], route.destination.buffer.location):
        assert delete(world, c.PACKAGE, "obs-1", loc).deleted == 1
        assert delete(world, c.BUNDLE, name, loc).deleted == 1
        # Retried or replayed: nothing more to do.
        assert delete(world, c.PACKAGE, "obs-1", loc).already
    rows = copies(world, "obs-1")
    assert {loc for loc, r in rows.items() if r.state == CopyState.DELETED} == {
        world.sites.buffers[0],
        route.destination.buffer.location,
    }
    assert all(rows[a.archive].verified for a in world.sites.archives)


def test_no_deletion_ever_removes_an_archive_copy(world):
    observe(world, "obs-1")
    transfer(world, package(world, "obs-1").transfer)
    for a in world.sites.archives:
        with pytest.raises(DeletionRefused, match="never deletes"):
            delete(world, c.PACKAGE, "obs-1", a.archive)
        assert world.path(a.archive, c.package_relpath("obs-1")).exists()


def test_the_rule_is_read_at_the_moment_of_deleting_not_from_the_caller(tmp_path):
    """Two verified archive copies needed: a copy found corrupt after the workflow decided to
    delete (a retry, a replay, an old run) makes the activity itself refuse."""
    world = new_world(tmp_path, min_archive_copies=2)
    observe(world, "obs-1")
    name = package(world, "obs-1").transfer
    transfer(world, name)
    second = world.sites.archives[1].archive
    with world.session() as s:
        row = s.exec(
            select(PhysicalCopy).where(PhysicalCopy.unit == "obs-1", PhysicalCopy.location == second)
        ).one()
        row.verified = False
        s.add(row)
        s.commit()
    for kind, unit, loc in (
        (c.FILE_SET, "obs-1", world.sites.source),
        (c.PACKAGE, "obs-1", world.sites.buffers[0]),
        (c.BUNDLE, name, world.sites.buffers[0]),
    ):
        with pytest.raises(DeletionRefused, match="1 site"):
            delete(world, kind, unit, loc)
    assert world.path(world.sites.buffers[0], c.package_relpath("obs-1")).exists()
    assert all(p.exists() for p in (Path(world.sites.root) / world.sites.source / "obs-1").iterdir())


def test_staging_copies_from_an_archive_and_unpacks_verified(world):
    observe(world, "obs-1")
    transfer(world, package(world, "obs-1").transfer)
    got = world.run(world.acts.ccat_stage, c.StageStepInput("obs-1", world.sites.processing))
    assert got.files == 3 and not got.already
    staged = world.path(world.sites.processing, f"{c.STAGED_DIR}/obs-1")
    assert len(list(staged.iterdir())) == 3
    assert copies(world, "obs-1")[world.sites.processing].state == CopyState.STAGED
    assert world.run(world.acts.ccat_stage, c.StageStepInput("obs-1", world.sites.processing)).already
    # Cleanup once the processing is done: the staged copy goes, the archives stay.
    assert delete(world, c.PACKAGE, "obs-1", world.sites.processing).deleted == 1


def test_places_carry_each_operation_queue_of_the_location(world):
    with world.session() as s:
        p = place(s, s.get(DataLocation, world.sites.buffers[0]))
    assert p.queue(c.TRANSFER).endswith(f"_{world.sites.buffers[0]}_transfer")
    with pytest.raises(ValueError, match="does not serve"):
        p.queue(c.ARCHIVE_TRANSFER)


def test_bundles_take_packages_until_the_limit_then_a_new_one_opens(tmp_path):
    world = new_world(tmp_path, bundle_limit_bytes=25_000)  # two packages of 10 KiB fit
    got = []
    for i in range(5):
        observe(world, f"obs-{i}")
        got.append(package(world, f"obs-{i}"))
    names = [g.transfer for g in got]
    first, second, third = (c.transfer_name(world.sites.buffers[0], n) for n in (1, 2, 3))
    assert names == [first, first, second, second, third]
    # Full: another package like the last would not fit.
    assert [g.full for g in got] == [False, True, False, True, False]
