"""Steps 4 and 5 of design.md against the test stack's real Rucio server (no mocks).

Files are registered on the session's own RSE, scope and destination (conftest), so
runs never touch another session's files. Names are random per test: Rucio cannot
delete DIDs, so each test keeps to a day_obs of its own.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from typing import TYPE_CHECKING

from unembargo.devstack import postgres, rucio_server
from unembargo.models import names
from unembargo.models.settings import Settings

if TYPE_CHECKING:
    from rucio.client import Client

INSTRUMENT = "LSSTCam"


def random_day_obs() -> int:
    """A far-future day_obs, so no earlier run (Rucio keeps DIDs for ever) used its names."""
    year = 2100 + secrets.randbelow(100)
    return int(f"{year}{1 + secrets.randbelow(12):02d}{1 + secrets.randbelow(28):02d}")


def random_obs_ids(day_obs: int, count: int) -> list[str]:
    """Distinct obs_ids of that day as LSSTCam writes them, with random sequence numbers."""
    seq_nums = secrets.SystemRandom().sample(range(1, 10**6), count)
    return [f"MC_O_{day_obs}_{seq:06d}" for seq in seq_nums]


def write_file(settings: Settings, name: str, size: int) -> dict[str, object]:
    """Write random bytes at dest_root/name; return its Rucio file description."""
    path = settings.dest_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(size)
    path.write_bytes(data)
    return {
        "scope": settings.rucio_scope,
        "name": name,
        "bytes": len(data),
        "adler32": f"{zlib.adler32(data):08x}",
        "md5": hashlib.md5(data).hexdigest(),
        "pfn": path.as_uri(),
    }


def test_ensure_again_is_already_up(stack_up: Settings) -> None:
    """A second bring-up finds the server and changes nothing."""
    assert rucio_server.ensure(stack_up, postgres.url(stack_up)) == "already up"
    ok, what = rucio_server.health(stack_up)
    assert ok, what


def test_pfn_is_destination_file(rucio: Client, stack_up: Settings, settings: Settings) -> None:
    """identity naming puts scope:name at prefix/scope/name, i.e. at dest_root/name."""
    name = names.zip_relpath(INSTRUMENT, 20251231, "MC_O_20251231_000010")
    ours = rucio_server.pfn_path(rucio, settings.rucio_rse, settings.rucio_scope, name)
    assert ours == settings.dest_root / name
    # The stack's own catalog (what `dev up` makes) follows the same rule.
    stack_path = rucio_server.pfn_path(rucio, stack_up.rucio_rse, stack_up.rucio_scope, name)
    assert stack_path == stack_up.dest_root.resolve() / name


def test_register_attach_tag_and_list(rucio: Client, settings: Settings) -> None:
    """Files registered in place, attached to both datasets, Obs closed and tagged, then listed."""
    scope, rse = settings.rucio_scope, settings.rucio_rse
    day_obs = random_day_obs()
    [exposure] = random_obs_ids(day_obs, 1)
    files = [
        write_file(settings, names.zip_relpath(INSTRUMENT, day_obs, exposure), 4096),
        write_file(settings, names.yaml_relpath(INSTRUMENT, day_obs, exposure), 512),
    ]
    assert rucio.add_replicas(rse, files)

    obs = names.obs_dataset(INSTRUMENT, day_obs, exposure)
    tract = names.tract_dataset(INSTRUMENT, day_obs, None)
    dids = [{"scope": scope, "name": f["name"]} for f in files]
    attachments = [{"scope": scope, "name": ds, "rse": rse, "dids": dids} for ds in (obs, tract)]
    for ds in (obs, tract):
        rucio.add_dataset(scope, ds)
    # Twice: the retried activity's attach must be a no-op, not FileAlreadyExists.
    for _ in range(2):
        rucio.add_files_to_datasets(attachments, ignore_duplicate=True)
    rucio.close(scope, obs)
    rucio.set_metadata(scope, obs, names.BACKUP_KEY, names.BACKUP_VALUE)

    pattern = names.obs_dataset_pattern(INSTRUMENT, day_obs)
    listed = set(rucio.list_dids(scope, [{"name": pattern}], did_type="dataset"))
    assert obs in listed
    assert rucio.get_metadata(scope, obs, plugin="JSON")[names.BACKUP_KEY] == names.BACKUP_VALUE
    assert rucio.get_metadata(scope, obs)["is_open"] is False

    want = {f["name"]: (f["bytes"], f["adler32"], f["md5"], f["pfn"]) for f in files}
    for ds in (obs, tract):
        # sort="random": the default (geoip) makes the server look for a GeoIP database.
        did = [{"scope": scope, "name": ds}]
        replicas = rucio.list_replicas(did, schemes=["file"], sort="random")
        got = {r["name"]: (r["bytes"], r["adler32"], r["md5"], *r["rses"][rse]) for r in replicas}
        assert got == want, ds


def test_list_by_backup_tag(rucio: Client, settings: Settings) -> None:
    """Operators can list a day's Obs datasets that still need the backup (name + JSON key)."""
    scope = settings.rucio_scope
    day_obs = random_day_obs()
    tagged, untagged = (names.obs_dataset(INSTRUMENT, day_obs, o) for o in random_obs_ids(day_obs, 2))
    rucio.add_dataset(scope, tagged)
    rucio.add_dataset(scope, untagged)
    rucio.set_metadata(scope, tagged, names.BACKUP_KEY, names.BACKUP_VALUE)

    pattern = names.obs_dataset_pattern(INSTRUMENT, day_obs)
    wanted = {"name": pattern, names.BACKUP_KEY: names.BACKUP_VALUE}
    found = set(rucio.list_dids(scope, [wanted], did_type="dataset"))
    assert tagged in found
    assert untagged not in found
