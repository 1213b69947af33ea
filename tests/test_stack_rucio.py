"""Steps 4 and 5 of design.md against the real local Rucio server (no mocks).

The module brings the shared dev server up (or finds it up) and registers files on a
private RSE whose destination is a temp dir, so runs never touch the dev RSE's files.
Names are random per run: Rucio cannot delete DIDs, so the same names cannot be reused.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from unembargo.activities.rucio_client import connect
from unembargo.devstack import rucio_server
from unembargo.models import names
from unembargo.models.settings import Settings

if TYPE_CHECKING:
    from rucio.client import Client

STATE = Path(__file__).resolve().parents[1] / ".dev"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
INSTRUMENT = "LSSTCam"
SCOPE = "raw"


@dataclass(frozen=True)
class PrivateRSE:
    """A test RSE and its destination root (<tmp>/<scope>: PFN = root/name)."""

    name: str
    dest_root: Path


@pytest.fixture(scope="module")
def dev_settings() -> Settings:
    """The dev stack's settings, anchored at the repo so the test runs from any cwd."""
    s = Settings(
        state_dir=STATE,
        rucio_password_file=STATE / "rucio" / "password",
        dest_root=STATE / "dest" / "raw",
    )
    rucio_server.ensure(s, PG_ADMIN_URL)
    return s


@pytest.fixture(scope="module")
def rucio(dev_settings: Settings) -> Client:
    """One authenticated Rucio client for the module."""
    return connect(dev_settings)


@pytest.fixture(scope="module")
def rse(rucio: Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRSE]:
    """A deterministic RSE of this module whose files live under a temp dir."""
    dest_root = tmp_path_factory.mktemp("rse") / SCOPE
    private = PrivateRSE(f"UNEMBARGO_TEST_{secrets.token_hex(4).upper()}", dest_root)
    rucio_server.ensure_rse(rucio, private.name, dest_root.parent)
    yield private
    rucio.delete_rse(private.name)


def random_day_obs() -> int:
    """A far-future day_obs, so no earlier run (Rucio keeps DIDs for ever) used its names."""
    year = 2100 + secrets.randbelow(100)
    return int(f"{year}{1 + secrets.randbelow(12):02d}{1 + secrets.randbelow(28):02d}")


def random_obs_ids(day_obs: int, count: int) -> list[str]:
    """Distinct obs_ids of that day as LSSTCam writes them, with random sequence numbers."""
    seq_nums = secrets.SystemRandom().sample(range(1, 10**6), count)
    return [f"MC_O_{day_obs}_{seq:06d}" for seq in seq_nums]


def write_file(dest_root: Path, name: str, size: int) -> dict[str, object]:
    """Write random bytes at dest_root/name; return its Rucio file description."""
    path = dest_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(size)
    path.write_bytes(data)
    return {
        "scope": SCOPE,
        "name": name,
        "bytes": len(data),
        "adler32": f"{zlib.adler32(data):08x}",
        "md5": hashlib.md5(data).hexdigest(),
        "pfn": path.as_uri(),
    }


def test_ensure_again_is_already_up(dev_settings: Settings) -> None:
    """A second bring-up finds the server and changes nothing."""
    assert rucio_server.ensure(dev_settings, PG_ADMIN_URL) == "already up"
    ok, what = rucio_server.health(dev_settings)
    assert ok, what


def test_pfn_is_destination_file(rucio: Client, dev_settings: Settings, rse: PrivateRSE) -> None:
    """identity naming puts scope:name at prefix/scope/name, i.e. at dest_root/name."""
    name = names.zip_relpath(INSTRUMENT, 20251231, "MC_O_20251231_000010")
    assert rucio_server.pfn_path(rucio, rse.name, SCOPE, name) == rse.dest_root / name
    dev_path = rucio_server.pfn_path(rucio, dev_settings.rucio_rse, dev_settings.rucio_scope, name)
    assert dev_path == dev_settings.dest_root.resolve() / name


def test_register_attach_tag_and_list(rucio: Client, rse: PrivateRSE) -> None:
    """Files registered in place, attached to both datasets, Obs closed and tagged, then listed."""
    day_obs = random_day_obs()
    [exposure] = random_obs_ids(day_obs, 1)
    files = [
        write_file(rse.dest_root, names.zip_relpath(INSTRUMENT, day_obs, exposure), 4096),
        write_file(rse.dest_root, names.yaml_relpath(INSTRUMENT, day_obs, exposure), 512),
    ]
    assert rucio.add_replicas(rse.name, files)

    obs = names.obs_dataset(INSTRUMENT, day_obs, exposure)
    tract = names.tract_dataset(INSTRUMENT, day_obs, None)
    dids = [{"scope": SCOPE, "name": f["name"]} for f in files]
    attachments = [{"scope": SCOPE, "name": ds, "rse": rse.name, "dids": dids} for ds in (obs, tract)]
    for ds in (obs, tract):
        rucio.add_dataset(SCOPE, ds)
    # Twice: the retried activity's attach must be a no-op, not FileAlreadyExists.
    for _ in range(2):
        rucio.add_files_to_datasets(attachments, ignore_duplicate=True)
    rucio.close(SCOPE, obs)
    rucio.set_metadata(SCOPE, obs, names.BACKUP_KEY, names.BACKUP_VALUE)

    pattern = names.obs_dataset_pattern(INSTRUMENT, day_obs)
    listed = set(rucio.list_dids(SCOPE, [{"name": pattern}], did_type="dataset"))
    assert obs in listed
    assert rucio.get_metadata(SCOPE, obs, plugin="JSON")[names.BACKUP_KEY] == names.BACKUP_VALUE
    assert rucio.get_metadata(SCOPE, obs)["is_open"] is False

    want = {f["name"]: (f["bytes"], f["adler32"], f["md5"], f["pfn"]) for f in files}
    for ds in (obs, tract):
        # sort="random": the default (geoip) makes the server look for a GeoIP database.
        did = [{"scope": SCOPE, "name": ds}]
        replicas = rucio.list_replicas(did, schemes=["file"], sort="random")
        got = {r["name"]: (r["bytes"], r["adler32"], r["md5"], *r["rses"][rse.name]) for r in replicas}
        assert got == want, ds


def test_list_by_backup_tag(rucio: Client) -> None:
    """Operators can list a day's Obs datasets that still need the backup (name + JSON key)."""
    day_obs = random_day_obs()
    tagged, untagged = (names.obs_dataset(INSTRUMENT, day_obs, o) for o in random_obs_ids(day_obs, 2))
    rucio.add_dataset(SCOPE, tagged)
    rucio.add_dataset(SCOPE, untagged)
    rucio.set_metadata(SCOPE, tagged, names.BACKUP_KEY, names.BACKUP_VALUE)

    pattern = names.obs_dataset_pattern(INSTRUMENT, day_obs)
    wanted = {"name": pattern, names.BACKUP_KEY: names.BACKUP_VALUE}
    found = set(rucio.list_dids(SCOPE, [wanted], did_type="dataset"))
    assert tagged in found
    assert untagged not in found
