"""The one factory for Rucio clients: configured from Settings only, never from a user's config.

    >>> client = connect(Settings())  # doctest: +SKIP
    >>> client.whoami()["account"]  # doctest: +SKIP
    'root'

rucio-clients looks for a rucio.cfg in $RUCIO_HOME, $VIRTUAL_ENV, /opt/rucio and caches its
token under the OS temp dir. ``connect`` writes a minimal ``<state_dir>/rucio/client.cfg``
(no password in it), points ``RUCIO_CONFIG`` at it and keeps the token under the state dir.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from unembargo.models.settings import Settings

if TYPE_CHECKING:
    from rucio.client import Client

# Per-request timeout; the largest batches (1000 files) take about 4 s.
REQUEST_TIMEOUT_S = 60


class _HidePassword(logging.Filter):
    """rucio-clients logs every request header at DEBUG, the userpass password included."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "X-Rucio-Password" not in record.getMessage()


LOG = logging.getLogger("unembargo.rucio")
LOG.addFilter(_HidePassword())


def client_config_text(settings: Settings, token_file: Path) -> str:
    """The client.cfg rucio-clients reads: hosts, account and where its token lives."""
    return (
        "[client]\n"
        f"rucio_host = {settings.rucio_host}\n"
        f"auth_host = {settings.rucio_auth_host or settings.rucio_host}\n"
        "auth_type = userpass\n"
        f"account = {settings.rucio_account}\n"
        f"auth_token_file_path = {token_file}\n"
    )


def use_client_config(settings: Settings) -> Path:
    """Write client.cfg if it changed and make it the only config rucio-clients reads."""
    from rucio.common.config import clean_cached_config

    root = settings.state_dir.resolve() / "rucio"
    token_dir = root / "token"
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = root / "client.cfg"
    token_file = token_dir / f"auth_token_for_account_{settings.rucio_account}"
    text = client_config_text(settings, token_file)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    os.environ["RUCIO_CONFIG"] = str(path)
    clean_cached_config()
    return path


def connect(settings: Settings) -> Client:
    """A Rucio client authenticated as settings.rucio_account with userpass from the settings."""
    use_client_config(settings)
    from rucio.client import Client
    from rucio.common.constants import DEFAULT_VO

    return Client(
        rucio_host=settings.rucio_host,
        auth_host=settings.rucio_auth_host or settings.rucio_host,
        account=settings.rucio_account,
        auth_type="userpass",
        creds={"username": settings.rucio_username, "password": settings.rucio_secret()},
        timeout=REQUEST_TIMEOUT_S,
        user_agent="unembargo",
        vo=DEFAULT_VO,
        logger=LOG,
    )
