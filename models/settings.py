"""Every endpoint and policy of unembargo, in one settings object.

Values come, highest first, from keyword arguments, environment variables
(``UNEMBARGO_<FIELD>``, e.g. ``UNEMBARGO_S3_BUCKET=embargo``), a TOML file named
by ``UNEMBARGO_CONFIG`` (or ``unembargo.toml`` in the working directory), then the
defaults below, which describe the local stack of ``unembargo dev up``.

Secrets (the Rucio password, a database URL with a password) are ``SecretStr``:
they never show in ``repr``, logs or workflow payloads. They come from the
environment or from files (``*_file`` fields), never from command-line arguments.

    >>> s = Settings(rucio_password="hunter2")
    >>> "hunter2" in repr(s)
    False
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class EmbargoRule(BaseModel):
    """Exposures matching a butler ``where`` clause stay embargoed for ``period``."""

    where: str
    period: timedelta


# As operators configure it today: calibrations that cannot see the sky are free at
# once; everything else waits the full embargo period. First matching rule wins.
# The butler's query language has no TRUE/FALSE literals: test a boolean column
# directly. An exposure whose can_see_sky is NULL matches no rule but the last.
DEFAULT_RULES = [
    EmbargoRule(where="NOT exposure.can_see_sky", period=timedelta(0)),
    EmbargoRule(where="", period=timedelta(hours=80)),
]


def _config_file() -> Path | None:
    named = os.environ.get("UNEMBARGO_CONFIG")
    if named:
        return Path(named)
    local = Path("unembargo.toml")
    return local if local.exists() else None


class Settings(BaseSettings):
    """Where everything is and how long things wait."""

    model_config = SettingsConfigDict(env_prefix="UNEMBARGO_", extra="ignore")

    # Project-local state of the dev stack: pids, logs, databases, repos.
    state_dir: Path = Path(".dev")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_url: str = "http://127.0.0.1:8233"
    # Queue of the exposure workflows themselves; activities use location queues.
    workflow_task_queue: str = "unembargo-workflows"

    s3_endpoint_url: str | None = "http://127.0.0.1:9010"
    s3_bucket: str = "embargo"
    s3_prefix: str = ""

    embargo_butler: str = ".dev/butler/embargo"
    main_butler: str = ".dev/butler/main"
    # Files land at <dest_root>/<instrument>/<day_obs>/; its last component is the
    # Rucio scope, so the RSE prefix is its parent (identity naming rule).
    dest_root: Path = Path(".dev/dest/raw")

    rucio_host: str = "http://127.0.0.1:8765"
    rucio_auth_host: str | None = None
    rucio_account: str = "root"
    rucio_username: str = "root"
    rucio_password: SecretStr | None = None
    rucio_password_file: Path | None = Path(".dev/rucio/password")
    rucio_rse: str = "UNEMBARGO_DEST"
    rucio_scope: str = "raw"

    database_url: SecretStr = SecretStr("sqlite:///.dev/unembargo.db")
    # Admin URL of the PostgreSQL the local stack uses (Rucio's database lives there).
    postgres_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")

    embargo_period: timedelta = timedelta(hours=80)
    embargo_rules: list[EmbargoRule] = DEFAULT_RULES
    # An exposure with fewer raws than expectedSensors is re-checked every
    # incomplete_poll until incomplete_wait has passed, then reported.
    incomplete_wait: timedelta = timedelta(hours=2)
    incomplete_poll: timedelta = timedelta(minutes=5)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def rucio_secret(self) -> str:
        """The Rucio password, from the setting or its file."""
        if self.rucio_password is not None:
            return self.rucio_password.get_secret_value()
        if self.rucio_password_file is not None and self.rucio_password_file.exists():
            return self.rucio_password_file.read_text().strip()
        raise RuntimeError(
            "no Rucio password: set UNEMBARGO_RUCIO_PASSWORD or UNEMBARGO_RUCIO_PASSWORD_FILE"
        )

    @property
    def rse_prefix(self) -> Path:
        """Root of the RSE: PFN = prefix/scope/name, so dest_root = prefix/scope."""
        return self.dest_root.resolve().parent


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL or a host:port address."""
    parts = urlsplit(url if "//" in url else f"//{url}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"expected host:port or a URL with a port, got {url!r}")
    return parts.hostname, parts.port
