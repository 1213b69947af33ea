"""Steps 4 (register) and 5 (tag) against the test stack's real Rucio server: no mocks.

The module gets its own scope, deterministic RSE, destination dir (<tmp>/<scope>, so
PFN = dest_root/name) and ledger database (conftest's ``module_settings``), so runs never see
each other's DIDs (Rucio cannot delete DIDs). Each test uses its own day_obs, hence its
own Tract, NoTract and Obs datasets.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from rucio.common.exception import DataIdentifierNotFound
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

from tcp_proxy import TcpProxy
from unembargo.activities.context import Resources
from unembargo.activities.rucio import RucioActivities
from unembargo.adapters.destination import receipt
from unembargo.models import names
from unembargo.models.errors import NON_RETRYABLE, BadInput, DestinationConflict, ReplicaConflict
from unembargo.models.exposure import Exposure, FileReceipt, RegisterInput, StepInput
from unembargo.models.settings import Settings, host_port
from unembargo.models.tables import Effect

if TYPE_CHECKING:
    from rucio.client import Client

INSTRUMENT = "LSSTCam"
_days = itertools.count()


@dataclass(frozen=True)
class Case:
    """One test's exposure and the receipts of its files, written at the destination."""

    exposure: Exposure
    zip: FileReceipt
    yaml: FileReceipt

    def register(self, tracts: list[int]) -> RegisterInput:
        return RegisterInput(self.exposure, self.zip, self.yaml, tracts)

    @property
    def step(self) -> StepInput:
        return StepInput(self.exposure)

    @property
    def files(self) -> list[str]:
        return [self.zip.relpath, self.yaml.relpath]

    @property
    def obs(self) -> str:
        e = self.exposure
        return names.obs_dataset(e.instrument, e.day_obs, e.obs_id)

    def tract(self, tract: int | None) -> str:
        return names.tract_dataset(self.exposure.instrument, self.exposure.day_obs, tract)


@pytest.fixture(scope="module")
def resources(module_settings: Settings) -> Resources:
    return Resources(module_settings)


@pytest.fixture(scope="module")
def acts(resources: Resources) -> RucioActivities:
    return RucioActivities(resources)


@pytest.fixture
def case(module_settings: Settings) -> Case:
    """A new exposure on a day of its own, with a small fake zip and yaml at the destination."""
    day_obs = int((date(2025, 1, 1) + timedelta(days=next(_days))).strftime("%Y%m%d"))
    seq = secrets.randbelow(10**5)
    exposure = Exposure(INSTRUMENT, day_obs, f"MC_O_{day_obs}_{seq:06d}", day_obs * 100000 + seq)
    key = (exposure.instrument, exposure.day_obs, exposure.obs_id)
    zip_file = write(module_settings, names.zip_relpath(*key), secrets.token_bytes(3000))
    yaml_file = write(module_settings, names.yaml_relpath(*key), f"obs_id: {exposure.obs_id}\n".encode())
    return Case(exposure, zip_file, yaml_file)


def write(settings: Settings, relpath: str, data: bytes) -> FileReceipt:
    """Write a file at the destination and return its receipt, as the zip/export steps do."""
    root = settings.dest_root.resolve()
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return receipt(root, path)


def run(fn: Callable[..., Any], arg: Any) -> Any:
    """Call an activity the way a worker does (activity context, heartbeats)."""
    return ActivityEnvironment().run(fn, arg)


def effects(resources: Resources, obs_id: str) -> Counter[tuple[str, str]]:
    """Ledger rows of an exposure, counted by (step, action)."""
    with Session(resources.engine) as session:
        rows = session.exec(select(Effect).where(Effect.obs_id == obs_id)).all()
    return Counter((row.step, row.action) for row in rows)


def content(rucio: Client, scope: str, dataset: str) -> set[str]:
    return {c["name"] for c in rucio.list_content(scope, dataset) if c["scope"] == scope}


def backup_value(rucio: Client, scope: str, dataset: str) -> Any:
    return rucio.get_metadata(scope, dataset, plugin="JSON").get(names.BACKUP_KEY)


def is_open(rucio: Client, scope: str, dataset: str) -> bool:
    return bool(rucio.get_did(scope, dataset)["open"])


def test_register_then_verify_independently(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """The real register step registers zip and yaml in place with their checksums and attaches them to
    every dataset; Rucio confirms."""
    got = run(acts.register_in_rucio, case.register([9813, 9814]))

    datasets = [case.tract(9813), case.tract(9814), case.obs]
    assert (got.files, got.datasets, got.already_done) == (2, datasets, False)
    scope, rse = module_settings.rucio_scope, module_settings.rucio_rse
    listed = rucio.list_replicas(
        [{"scope": scope, "name": n} for n in case.files], schemes=["file"], all_states=True
    )
    by_name = {r["name"]: r for r in listed}
    for want in (case.zip, case.yaml):
        rep = by_name[want.relpath]
        assert (rep["bytes"], rep["adler32"], rep["md5"]) == (want.size, want.adler32, want.md5)
        assert rep["states"] == {rse: "AVAILABLE"}
        [pfn] = rep["rses"][rse]
        assert Path(urlsplit(pfn).path) == module_settings.dest_root.resolve() / want.relpath
    for dataset in datasets:
        assert content(rucio, scope, dataset) == set(case.files)
    assert is_open(rucio, scope, case.obs)
    # One ledger row per dataset made, each named, so exactly-once checks can tell them apart.
    assert effects(resources, case.exposure.obs_id) == {
        **{("register", f"add_dataset {dataset}"): 1 for dataset in datasets},
        ("register", "add_replicas"): 1,
        ("register", "attach"): 1,
    }


def test_second_register_is_already_done_without_writes(
    acts: RucioActivities, resources: Resources, case: Case
) -> None:
    """A second register finds it done in Rucio and writes nothing."""
    first = run(acts.register_in_rucio, case.register([77]))
    before = effects(resources, case.exposure.obs_id)

    second = run(acts.register_in_rucio, case.register([77]))

    assert (first.already_done, second.already_done) == (False, True)
    assert second.datasets == first.datasets
    assert effects(resources, case.exposure.obs_id) == before


def test_no_tract_goes_to_the_notract_dataset(
    acts: RucioActivities, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """An exposure with no tracts is attached to the day's NoTract dataset."""
    got = run(acts.register_in_rucio, case.register([]))

    assert got.datasets == [case.tract(None), case.obs]
    assert case.tract(None).endswith(f"/raw/{names.NO_TRACT}/{case.exposure.day_obs}")
    for dataset in got.datasets:
        assert content(rucio, module_settings.rucio_scope, dataset) == set(case.files)


def test_existing_replica_with_other_checksums_is_a_conflict(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """A replica in Rucio with other checksums is ReplicaConflict; nothing is written."""
    scope = module_settings.rucio_scope
    stale = {"scope": scope, "name": case.zip.relpath, "bytes": case.zip.size, "adler32": "0badc0de"}
    rucio.add_replicas(module_settings.rucio_rse, [stale])

    with pytest.raises(ReplicaConflict, match="adler32=0badc0de"):
        run(acts.register_in_rucio, case.register([5]))

    # Nothing written: Rucio still has the old values, no dataset, no ledger row.
    assert rucio.get_did(scope, case.zip.relpath)["adler32"] == "0badc0de"
    with pytest.raises(DataIdentifierNotFound):
        rucio.get_did(scope, case.obs)
    assert effects(resources, case.exposure.obs_id) == {}


def test_register_resumes_after_replicas_were_added(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """A crash after add_replicas, with one Tract dataset made by another exposure."""
    scope = module_settings.rucio_scope
    rucio.add_replicas(
        module_settings.rucio_rse,
        [
            {"scope": scope, "name": f.relpath, "bytes": f.size, "adler32": f.adler32, "md5": f.md5}
            for f in (case.zip, case.yaml)
        ],
    )
    rucio.add_dataset(scope, case.tract(3))

    got = run(acts.register_in_rucio, case.register([3]))

    assert not got.already_done
    assert effects(resources, case.exposure.obs_id) == {
        ("register", f"add_dataset {case.obs}"): 1,
        ("register", "attach"): 1,
    }
    for dataset in got.datasets:
        assert content(rucio, scope, dataset) == set(case.files)


def test_closed_obs_dataset_missing_files_is_a_conflict(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """A closed Obs dataset lacking the files is ReplicaConflict; nothing is written."""
    scope = module_settings.rucio_scope
    rucio.add_dataset(scope, case.obs)
    rucio.close(scope, case.obs)

    with pytest.raises(ReplicaConflict, match="is closed but lacks"):
        run(acts.register_in_rucio, case.register([8]))

    assert effects(resources, case.exposure.obs_id) == {}
    assert list(rucio.list_replicas([{"scope": scope, "name": n} for n in case.files])) == []


def test_file_missing_at_the_destination_is_not_registered(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """A file missing at the destination is DestinationConflict and is never registered."""
    (module_settings.dest_root / case.yaml.relpath).unlink()

    with pytest.raises(DestinationConflict, match="is missing"):
        run(acts.register_in_rucio, case.register([8]))

    assert effects(resources, case.exposure.obs_id) == {}
    scope = module_settings.rucio_scope
    assert list(rucio.list_replicas([{"scope": scope, "name": n} for n in case.files])) == []


def test_tag_closes_and_sets_backup_metadata(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """The real tag step closes the Obs dataset and sets arcBackup; Rucio returns it."""
    run(acts.register_in_rucio, case.register([11]))

    got = run(acts.tag_obs_dataset, case.step)

    assert (got.dataset, got.already_done) == (case.obs, False)
    assert got.metadata == f"{names.BACKUP_KEY}={names.BACKUP_VALUE}"
    scope = module_settings.rucio_scope
    assert backup_value(rucio, scope, case.obs) == names.BACKUP_VALUE
    assert not is_open(rucio, scope, case.obs)
    assert content(rucio, scope, case.obs) == set(case.files)
    done = effects(resources, case.exposure.obs_id)
    assert (done[("tag", "close")], done[("tag", "set_metadata")]) == (1, 1)


def test_second_tag_is_already_done_without_writes(
    acts: RucioActivities, resources: Resources, case: Case
) -> None:
    """A second tag (and a register after it) is already done and writes nothing."""
    run(acts.register_in_rucio, case.register([12]))
    run(acts.tag_obs_dataset, case.step)
    before = effects(resources, case.exposure.obs_id)

    again = run(acts.tag_obs_dataset, case.step)

    assert again.already_done
    assert effects(resources, case.exposure.obs_id) == before
    # And register after tag is still recognised as done (the Obs dataset being closed is fine).
    assert run(acts.register_in_rucio, case.register([12])).already_done


def test_tag_resumes_after_a_crash_between_close_and_metadata(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """Tag after a crash between close and set_metadata only sets the metadata."""
    run(acts.register_in_rucio, case.register([13]))
    rucio.close(module_settings.rucio_scope, case.obs)

    got = run(acts.tag_obs_dataset, case.step)

    assert not got.already_done
    assert backup_value(rucio, module_settings.rucio_scope, case.obs) == names.BACKUP_VALUE
    done = effects(resources, case.exposure.obs_id)
    assert (done[("tag", "close")], done[("tag", "set_metadata")]) == (0, 1)


def test_tag_before_register_is_refused_without_writes(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """Tag of an Obs dataset that does not exist is ReplicaConflict; nothing is created."""
    with pytest.raises(ReplicaConflict, match="does not exist"):
        run(acts.tag_obs_dataset, case.step)
    with pytest.raises(DataIdentifierNotFound):
        rucio.get_did(module_settings.rucio_scope, case.obs)
    assert effects(resources, case.exposure.obs_id) == {}


def test_tag_of_a_half_registered_obs_dataset_leaves_it_open(
    acts: RucioActivities, resources: Resources, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """Closing it would lock the missing yaml out for ever."""
    scope = module_settings.rucio_scope
    f = case.zip
    rucio.add_replicas(
        module_settings.rucio_rse,
        [{"scope": scope, "name": f.relpath, "bytes": f.size, "adler32": f.adler32, "md5": f.md5}],
    )
    rucio.add_dataset(scope, case.obs)
    rucio.add_files_to_datasets(
        [{"scope": scope, "name": case.obs, "dids": [{"scope": scope, "name": f.relpath}]}]
    )

    with pytest.raises(ReplicaConflict, match="lacks"):
        run(acts.tag_obs_dataset, case.step)

    assert is_open(rucio, scope, case.obs)
    assert backup_value(rucio, scope, case.obs) is None
    # Register then completes the dataset, and tag succeeds.
    assert not run(acts.register_in_rucio, case.register([14])).already_done
    assert not run(acts.tag_obs_dataset, case.step).already_done


def test_tag_leaves_another_backup_value_alone(
    acts: RucioActivities, rucio: Client, module_settings: Settings, case: Case
) -> None:
    """Tag never overwrites another arcBackup value (ReplicaConflict), and leaves the dataset open."""
    run(acts.register_in_rucio, case.register([15]))
    scope = module_settings.rucio_scope
    rucio.set_metadata(scope, case.obs, names.BACKUP_KEY, "SLAC_RAW_DISK_BKUP:done")

    with pytest.raises(ReplicaConflict, match="left as it is"):
        run(acts.tag_obs_dataset, case.step)

    assert backup_value(rucio, scope, case.obs) == "SLAC_RAW_DISK_BKUP:done"
    assert is_open(rucio, scope, case.obs)


@pytest.fixture
def relay(module_settings: Settings) -> Iterator[TcpProxy]:
    """A proxy to the Rucio server: refuse() stages an outage, resume() ends it."""
    relay = TcpProxy(host_port(module_settings.rucio_host))
    relay.start()
    yield relay
    relay.refuse()


def test_outage_is_an_ordinary_error_and_the_retry_completes(
    module_settings: Settings, relay: TcpProxy, rucio: Client, case: Case
) -> None:
    """Connection refused propagates as a retryable error; after the outage all is done."""
    resources = Resources(module_settings.model_copy(update={"rucio_host": relay.url}))
    acts = RucioActivities(resources)
    resources.rucio()  # authenticated while the server is reachable
    relay.refuse()

    with pytest.raises(Exception) as failed:
        run(acts.register_in_rucio, case.register([21]))
    assert not isinstance(failed.value, BadInput)
    assert type(failed.value).__name__ not in NON_RETRYABLE

    relay.resume()
    assert not run(acts.register_in_rucio, case.register([21])).already_done
    assert content(rucio, module_settings.rucio_scope, case.obs) == set(case.files)
