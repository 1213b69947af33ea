"""Build the Rucio database, its base VO and root account; runs inside the Rucio server venv.

Run by ``rucio_server.ensure`` as ``<rucio venv>/bin/python rucio_bootstrap.py USERNAME``
with ``RUCIO_CONFIG`` naming the server's rucio.cfg. The root password arrives on stdin,
so it is never on a command line; nothing here prints it. Every step checks first, so
running it again changes nothing, and a password file that was regenerated while the
database was kept is brought back in line.
"""

from __future__ import annotations

import hashlib
import os
import sys

from rucio.common.config import config_get, config_set
from rucio.common.constants import DEFAULT_VO
from rucio.common.exception import IdentityError, IdentityNotFound
from rucio.common.types import InternalAccount
from rucio.core.account import account_exists
from rucio.core.identity import add_account_identity, verify_identity
from rucio.core.vo import vo_exists
from rucio.db.sqla import models
from rucio.db.sqla.constants import DatabaseOperationType, IdentityType
from rucio.db.sqla.session import db_session, get_engine
from rucio.db.sqla.util import build_database, create_base_vo, create_root_account
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

ROOT = InternalAccount("root", DEFAULT_VO)


def database_built() -> bool:
    """True once build_database has stamped the schema (alembic_version exists)."""
    schema = config_get("database", "schema", raise_exception=False, check_config_table=False)
    return inspect(get_engine()).has_table(models.AlembicVersion.__tablename__, schema)


def ensure_root(username: str, password: str) -> None:
    """Create root with a userpass identity only; its password is set in memory, not in a file."""
    with db_session(DatabaseOperationType.READ) as session:
        if account_exists(ROOT, session=session):
            return
    config_set("bootstrap", "userpass_identity", username)
    config_set("bootstrap", "userpass_pwd", password)
    create_root_account()
    print("created root account", flush=True)


def set_password(username: str, password: str, session: Session) -> None:
    """Re-hash the password in place, the way add_identity hashes it."""
    # Rucio has no password change, and del_identity only soft-deletes the row, so a
    # delete-then-add in one session silently keeps the old hash (seen on 41.5.1).
    row = session.execute(
        select(models.Identity).where(
            models.Identity.identity == username,
            models.Identity.identity_type == IdentityType.USERPASS,
        )
    ).scalar_one()
    salt = os.urandom(255)
    row.update(
        {
            "salt": salt,
            "password": hashlib.sha256(salt + password.encode()).hexdigest(),
            "deleted": False,
            "deleted_at": None,
        }
    )


def ensure_password(username: str, password: str) -> None:
    """Make the root userpass identity accept ``password``."""
    email = config_get("bootstrap", "userpass_email", default="root@localhost")
    with db_session(DatabaseOperationType.WRITE) as session:
        try:
            verify_identity(username, IdentityType.USERPASS, password, session=session)
            return
        except IdentityNotFound:
            set_password(username, password, session)
        except IdentityError:
            add_account_identity(
                username,
                IdentityType.USERPASS,
                ROOT,
                email,
                default=True,
                password=password,
                session=session,
            )
    print(f"set the password of userpass identity {username!r}", flush=True)


def main() -> int:
    """Bring the database to a usable state: schema, base VO, root account and its password."""
    username = sys.argv[1]
    password = sys.stdin.read().strip()
    if not password:
        print("no password on stdin", file=sys.stderr)
        return 2
    if not database_built():
        build_database()
        print("built the database schema", flush=True)
    with db_session(DatabaseOperationType.READ) as session:
        has_vo = vo_exists(DEFAULT_VO, session=session)
    if not has_vo:
        create_base_vo()
        print("created the base VO", flush=True)
    ensure_root(username, password)
    ensure_password(username, password)
    return 0


if __name__ == "__main__":
    sys.exit(main())
