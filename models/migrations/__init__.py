"""The database's schema history (alembic): ``upgrade`` brings any database to every head.

Each flow owns a branch of revisions in ``versions/`` (``<flow>_0001_<what>.py``, its own
``branch_labels``, ``depends_on="locations_0001"``); ``upgrade`` runs them all, so a flow's tables
appear the first time any command connects after the flow is installed. No ``alembic.ini``: the
configuration is built here, so it works from any directory.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)
# Alembic's context says which dialect it found each time one is made (every connect): not news.
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

HERE = Path(__file__).resolve().parent
# The revision that creates the sites, locations and the side-effect ledger: every flow's
# branch depends on it.
BASE = "locations_0001"


def config() -> Config:
    """Alembic's configuration, pointing at this folder."""
    cfg = Config()
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_locations", str(HERE / "versions"))
    return cfg


def heads() -> set[str]:
    """The newest revision of every branch."""
    return set(ScriptDirectory.from_config(config()).get_heads())


def current(connection: Connection) -> set[str]:
    """Every revision a database has (empty for a new one or one made before migrations): those
    alembic records and all they build on, branches they depend on included."""
    recorded = MigrationContext.configure(connection).get_current_heads()
    if not recorded:
        return set()
    script = ScriptDirectory.from_config(config())
    return {rev.revision for rev in script.iterate_revisions(recorded, "base")}


def upgrade(engine: Engine) -> None:
    """Bring the database to every head, once, even when several processes start together."""
    with engine.connect() as conn:
        if heads() <= current(conn):
            return
    with _exclusive(engine):
        with engine.begin() as conn:
            before = current(conn)
            cfg = config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
            if not heads() <= before:
                log.info(
                    "database %s migrated to %s", engine.url.render_as_string(), ", ".join(sorted(heads()))
                )


@contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """Only one process migrates a database at a time: a lock file beside an SQLite database
    (PostgreSQL takes an advisory lock in env.py, in the migrating transaction)."""
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
