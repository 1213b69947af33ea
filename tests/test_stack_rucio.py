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


@dataclass(frozen=True)
class PrivateRSE:
    """A test RSE and its destination root (<tmp>/<scope>: PFN = root/name)."""

    name: str
    dest_root: Path


@pytest.fixture(scope="module")
def settings() -> Settings:
    """The dev stack's settings, anchored at the repo so the test runs from any cwd."""
    s = Settings(
        state_dir=STATE,
        rucio_password_file=STATE / "rucio" / "password",
        dest_root=STATE / "dest" / "raw",
    )
    rucio_server.ensure(s, PG_ADMIN_URL)
    return s


@pytest.fixture(scope="module")
def client(settings: Settings) -> Client:
    """One authenticated client for the module."""
    return connect(settings)


@pytest.fixture(scope="module")
def rse(client: Client, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRSE]:
    """A deterministic RSE of this module whose files live under a temp dir."""
    dest_root = tmp_path_factory.mktemp("rse") / settings.rucio_scope
    private = PrivateRSE(f"UNEMBARGO_TEST_{secrets.token_hex(4).upper()}", dest_root)
    rucio_server.ensure_rse(client, private.name, dest_root.parent)
    yield private
    client.delete_rse(private.name)


def random_day_obs() -> int:
    """A far-future day_obs, so no earlier run (Rucio keeps DIDs for ever) used its names."""
    year = 2100 + secrets.randbelow(100)
    return int(f"{year}{1 + secrets.randbelow(12):02d}{1 + secrets.randbelow(28):02d}")


def obs_id(day_obs: int, seq_num: int) -> str:
    """obs_id as LSSTCam writes it."""
    return f"MC_O_{day_obs}_{seq_num:06d}"


def write_file(dest_root: Path, name: str, size: int) -> dict[str, object]:
    """Write random bytes at dest_root/name; return its Rucio file description."""
    path = dest_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(size)
    path.write_bytes(data)
    return {
        "scope": "raw",
        "name": name,
        "bytes": len(data),
        "adler32": f"{zlib.adler32(data):08x}",
        "md5": hashlib.md5(data).hexdigest(),
        "pfn": path.as_uri(),
    }


def test_ensure_again_is_already_up(settings: Settings) -> None:
    """A second bring-up finds the server and changes nothing."""
    assert rucio_server.ensure(settings, PG_ADMIN_URL) == "already up"
    ok, what = rucio_server.health(settings)
    assert ok, what


def test_pfn_is_destination_file(client: Client, settings: Settings, rse: PrivateRSE) -> None:
    """identity naming puts scope:name at prefix/scope/name, i.e. at dest_root/name."""
    name = names.zip_relpath(INSTRUMENT, 20251231, "MC_O_20251231_000010")
    assert rucio_server.pfn_path(client, rse.name, "raw", name) == rse.dest_root / name
    dev_path = rucio_server.pfn_path(client, settings.rucio_rse, settings.rucio_scope, name)
    assert dev_path == settings.dest_root.resolve() / name


def test_register_attach_tag_and_list(client: Client, rse: PrivateRSE) -> None:
    """Files registered in place, attached to both datasets, Obs closed and tagged, then listed."""
    day_obs = random_day_obs()
    exposure = obs_id(day_obs, 10)
    files = [
        write_file(rse.dest_root, names.zip_relpath(INSTRUMENT, day_obs, exposure), 4096),
        write_file(rse.dest_root, names.yaml_relpath(INSTRUMENT, day_obs, exposure), 512),
    ]
    assert client.add_replicas(rse.name, files)

    obs = names.obs_dataset(INSTRUMENT, day_obs, exposure)
    tract = names.tract_dataset(INSTRUMENT, day_obs, None)
    dids = [{"scope": "raw", "name": f["name"]} for f in files]
    attachments = [{"scope": "raw", "name": ds, "rse": rse.name, "dids": dids} for ds in (obs, tract)]
    for ds in (obs, tract):
        client.add_dataset("raw", ds)
    # Twice: the retried activity's attach must be a no-op, not FileAlreadyExists.
    for _ in range(2):
        client.add_files_to_datasets(attachments, ignore_duplicate=True)
    client.close("raw", obs)
    client.set_metadata("raw", obs, names.BACKUP_KEY, names.BACKUP_VALUE)

    pattern = names.obs_dataset_pattern(INSTRUMENT, day_obs)
    listed = set(client.list_dids("raw", [{"name": pattern}], did_type="dataset"))
    assert obs in listed
    assert client.get_metadata("raw", obs, plugin="JSON")[names.BACKUP_KEY] == names.BACKUP_VALUE
    assert client.get_metadata("raw", obs)["is_open"] is False

    want = {f["name"]: (f["bytes"], f["adler32"], f["md5"], f["pfn"]) for f in files}
    for ds in (obs, tract):
        replicas = client.list_replicas([{"scope": "raw", "name": ds}], schemes=["file"])
        got = {r["name"]: (r["bytes"], r["adler32"], r["md5"], *r["rses"][rse.name]) for r in replicas}
        assert got == want, ds


def test_list_by_backup_tag(client: Client) -> None:
    """Operators can list a day's Obs datasets that still need the backup (name + JSON key)."""
    day_obs = random_day_obs()
    tagged = names.obs_dataset(INSTRUMENT, day_obs, obs_id(day_obs, 1))
    untagged = names.obs_dataset(INSTRUMENT, day_obs, obs_id(day_obs, 2))
    client.add_dataset("raw", tagged)
    client.add_dataset("raw", untagged)
    client.set_metadata("raw", tagged, names.BACKUP_KEY, names.BACKUP_VALUE)

    pattern = names.obs_dataset_pattern(INSTRUMENT, day_obs)
    wanted = {"name": pattern, names.BACKUP_KEY: names.BACKUP_VALUE}
    found = set(client.list_dids("raw", [wanted], did_type="dataset"))
    assert found == {tagged}
