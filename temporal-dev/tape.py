"""The local stack's tape system: files put to the tape location's disk cache "migrate" to its
tape folder some time later, as a site's tape system (HPSS, CTA, dCache with tape) would.

A service of ``unembargo dev up`` (``tape``), or ``python -m unembargo.devstack.tape ROOT``.
What it does is read from ``<root>/migrator.json`` on every pass, so a test can change it while
it runs::

    {"delay_s": 2.0,                # a cache copy migrates once it is this old
     "never": ["*/run9_0001.raw"],  # LFN patterns that never migrate
     "corrupt": ["*/run9_0002.raw"]}  # LFN patterns whose tape copy gets a flipped byte
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from unembargo.adapters.tape import LocalTape
from unembargo.devstack import procs
from unembargo.models.locations import DataLocation, LocationType, StorageType
from unembargo.models.rawintegrity import STEPS, RawIntegritySettings, Step
from unembargo.models.settings import Settings

NAME = "tape"
CONFIG = "migrator.json"
# Seconds between passes over the cache.
PASS_S = 0.2

log = logging.getLogger(__name__)


@dataclass
class Migration:
    delay_s: float = 30.0
    never: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


def read_config(root: Path) -> Migration:
    """The migration settings in ``<root>/migrator.json`` (defaults if it is missing or unreadable)."""
    try:
        data = json.loads((root / CONFIG).read_text())
        return Migration(
            float(data.get("delay_s", 30.0)), list(data.get("never", [])), list(data.get("corrupt", []))
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return Migration()


def write_config(root: Path, migration: Migration) -> None:
    """Write the settings atomically (the service reads them on its next pass)."""
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f".{CONFIG}.tmp"
    temp.write_text(json.dumps(migration.__dict__))
    temp.replace(root / CONFIG)


def _matches(lfn: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(lfn, p) for p in patterns)


def migrate_once(tape: LocalTape, migration: Migration, now: float | None = None) -> list[str]:
    """Migrate every cache copy older than the delay (except never-migrating ones); their LFNs."""
    now = time.time() if now is None else now
    done = []
    for lfn in tape.cached_lfns():
        if _matches(lfn, migration.never):
            continue
        try:
            if now - tape.cache_path(lfn).stat().st_mtime < migration.delay_s:
                continue
            tape.migrate(lfn, corrupt=_matches(lfn, migration.corrupt))
        except FileNotFoundError:
            continue  # removed meanwhile
        done.append(lfn)
    return done


def serve(root: Path, stop_after: float | None = None) -> None:
    """Pass over the cache every PASS_S seconds until killed (or ``stop_after`` seconds)."""
    tape = LocalTape(root)
    root.mkdir(parents=True, exist_ok=True)
    deadline = None if stop_after is None else time.monotonic() + stop_after
    while deadline is None or time.monotonic() < deadline:
        for lfn in migrate_once(tape, read_config(root)):
            log.info("migrated %s", lfn)
        time.sleep(PASS_S)


def root_of(settings: Settings) -> Path:
    return RawIntegritySettings().tape(settings.state_dir).resolve()


def address(settings: Settings) -> str:
    return str(root_of(settings))


def health(settings: Settings) -> tuple[bool, str]:
    rec = procs.recorded(settings.state_dir, NAME)
    if rec is None:
        return False, "not running"
    return True, f"migrating after {read_config(root_of(settings)).delay_s:g}s"


def flow_locations(settings: Settings) -> list[DataLocation]:
    """The rawintegrity flow's locations of the local stack: its online disk (the online copy's
    removal) and its tape (put, migration checks, a bad copy's removal). The stack's worker
    serves them, with ``local-rucio`` for the registration."""
    config = RawIntegritySettings()

    def ops(*steps: Step) -> str:
        return ",".join(sorted({STEPS[s].location for s in steps}))

    return [
        DataLocation(name=config.online_location, site="local", type=LocationType.SOURCE,
                     storage=StorageType.DISK, path=str(config.online(settings.state_dir).resolve()),
                     operations=ops(Step.REMOVE_ONLINE)),
        DataLocation(name=config.tape_location, site="local", type=LocationType.LONG_TERM_ARCHIVE,
                     storage=StorageType.TAPE, path=str(root_of(settings)),
                     operations=ops(Step.PUT, Step.TAPE, Step.REMOVE_TAPE)),
    ]  # fmt: skip


def ensure_flow(settings: Settings) -> None:
    """The flow's folders, locations (``flow_locations``) and tape RSE (idempotent).

    ``unembargo rawintegrity put --run FOLDER`` then puts what is under
    ``<state_dir>/rawintegrity/online/FOLDER``.
    """
    from rucio.common.exception import Duplicate
    from sqlmodel import Session

    from unembargo.adapters.rucio_client import connect as rucio_connect
    from unembargo.models.locations import upsert_location
    from unembargo.models.tables import connect

    RawIntegritySettings().online(settings.state_dir).mkdir(parents=True, exist_ok=True)
    root_of(settings).mkdir(parents=True, exist_ok=True)
    with Session(connect(settings.database_url.get_secret_value())) as session:
        for loc in flow_locations(settings):
            upsert_location(session, loc)
    try:
        rucio_connect(settings).add_rse(RawIntegritySettings().rse, deterministic=True, rse_type="TAPE")
    except Duplicate:
        pass


def ensure(settings: Settings) -> str:
    root = root_of(settings)
    root.mkdir(parents=True, exist_ok=True)
    ensure_flow(settings)
    if health(settings)[0]:
        return "already up"
    if not (root / CONFIG).exists():
        write_config(root, Migration())
    procs.start(settings.state_dir, NAME, [sys.executable, "-m", "unembargo.devstack.tape", str(root)])
    return "started"


def stop(settings: Settings) -> bool:
    return procs.stop(settings.state_dir, NAME)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the tape location's root (cache/ and tape/ under it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    serve(args.root)


if __name__ == "__main__":
    main()
