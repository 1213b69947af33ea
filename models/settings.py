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
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """'80h', '30m', '2d', '45s' or '0' as a timedelta.

    >>> parse_duration("80h")
    datetime.timedelta(days=3, seconds=28800)
    """
    if text.strip() == "0":
        return timedelta(0)
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 80h, 30m, 2d or 0")
    return timedelta(**{_UNIT[match.group(2)]: float(match.group(1))})


def _duration(value: Any) -> Any:
    """Accept '80h' style strings as well as what pydantic takes (ISO 8601, seconds)."""
    if isinstance(value, str) and _DURATION.match(value.strip()):
        return parse_duration(value)
    return value


# A duration setting: "80h", "PT80H" or a number of seconds.
Duration = Annotated[timedelta, BeforeValidator(_duration)]


class EmbargoRule(BaseModel):
    """Exposures matching a butler ``where`` clause stay embargoed for ``period``."""

    where: str
    period: Duration


# Calibrations that cannot see the sky are free at once, as operators configure it today.
# The butler's query language has no TRUE/FALSE literals: test a boolean column directly.
# An exposure whose can_see_sky is NULL matches no rule but the catch-all.
CALIBRATION_RULE = EmbargoRule(where="NOT exposure.can_see_sky", period=timedelta(0))


def _config_file() -> Path | None:
    named = os.environ.get("UNEMBARGO_CONFIG")
    if named:
        if not Path(named).is_file():
            raise FileNotFoundError(f"UNEMBARGO_CONFIG names {named!r}, which is not a file")
        return Path(named)
    local = Path("unembargo.toml")
    return local if local.exists() else None


def _under_state(*parts: str) -> Any:
    """Default that follows ``state_dir`` (declared first, so already validated)."""
    return lambda data: Path(data["state_dir"]).joinpath(*parts)


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
    # File holding the key that encrypts every Temporal payload (client/codec.py); the
    # key itself is never a setting, so it is in no environment or command line.
    payload_key_file: Path | None = None

    s3_endpoint_url: str | None = "http://127.0.0.1:9010"
    s3_bucket: str = "embargo"
    s3_prefix: str = ""

    # Butler repos: a path or URI of the repo (or of its butler.yaml).
    embargo_butler: str = Field(default_factory=lambda d: str(_under_state("butler", "embargo")(d)))
    main_butler: str = Field(default_factory=lambda d: str(_under_state("butler", "main")(d)))
    # Files land at <dest_root>/<instrument>/<day_obs>/; its last component is the
    # Rucio scope, so the RSE prefix is its parent (identity naming rule).
    dest_root: Path = Field(default_factory=_under_state("dest", "raw"))

    rucio_host: str = "http://127.0.0.1:8765"
    rucio_auth_host: str | None = None
    rucio_account: str = "root"
    rucio_username: str = "root"
    rucio_password: SecretStr | None = None
    rucio_password_file: Path | None = Field(default_factory=_under_state("rucio", "password"))
    rucio_rse: str = "UNEMBARGO_DEST"
    rucio_scope: str = "raw"

    database_url: SecretStr = Field(
        default_factory=lambda d: SecretStr(f"sqlite:///{_under_state('unembargo.db')(d)}")
    )
    # Admin URL of the PostgreSQL the local stack uses (Rucio's database lives there).
    postgres_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/postgres")
    # Port of the private cluster the local stack starts when postgres_url does not answer.
    postgres_private_port: int = 54329

    # Embargo of everything no rule frees earlier. Rules (a butler where clause and a
    # period each, first match wins) default to: calibrations 0 h, then this period.
    embargo_period: Duration = timedelta(hours=80)
    embargo_rules: list[EmbargoRule] | None = None
    # An exposure with fewer raws than expectedSensors is re-checked every
    # incomplete_poll until incomplete_wait has passed, then reported.
    incomplete_wait: Duration = timedelta(hours=2)
    incomplete_poll: Duration = timedelta(minutes=5)
    # A worker killed mid-step is noticed after this long without a heartbeat; the step
    # then runs again after STEP_RETRY's first backoff (1 s): a step waits at most about
    # 11 s for another worker (benchmarks/recovery.py, docs/performance.md). Steps beat
    # from a side thread every timeout / 3 (activities/context.heartbeating) and the SDK
    # sends at most one beat per 0.8 x timeout from its own (Rust) threads, so a worker's
    # Python may stall about 4 s before a live attempt is taken for dead and run twice
    # (which is safe: every step checks first, installs without replacing). Each running
    # step costs the server one heartbeat per 8 s. Raise it for workers that stall longer.
    heartbeat_timeout: Duration = Field(default=timedelta(seconds=10), ge=timedelta(seconds=1))
    # How long a watching `unembargo start` rides out a Temporal that does not answer
    # (a restart, a network blip) before it gives up with TemporalUnreachable (exit 2).
    # The workflows do not depend on it: they keep running on the server meanwhile.
    temporal_outage_limit: Duration = Field(default=timedelta(minutes=10), ge=timedelta(0))

    # Where spans go: "auto" is OTLP/HTTP to otel_endpoint when one is set, else the
    # console (stderr, one JSON line per span); "none" drops them.
    otel_exporter: Literal["auto", "console", "otlp", "none"] = "auto"
    otel_endpoint: str | None = None

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

    def rules(self) -> list[EmbargoRule]:
        """The embargo rules in force; the last one catches every exposure."""
        if self.embargo_rules is not None:
            return self.embargo_rules
        return [CALIBRATION_RULE, EmbargoRule(where="", period=self.embargo_period)]

    def rucio_secret(self) -> str:
        """The Rucio password, from the setting or its file."""
        if self.rucio_password is not None:
            return self.rucio_password.get_secret_value()
        if self.rucio_password_file is not None and self.rucio_password_file.exists():
            return self.rucio_password_file.read_text().strip()
        raise RuntimeError("no Rucio password: set UNEMBARGO_RUCIO_PASSWORD or UNEMBARGO_RUCIO_PASSWORD_FILE")

    def environment(self) -> dict[str, str]:
        """``UNEMBARGO_*`` variables that reproduce these settings in a child process.

        Secrets included: pass them to the child's environment only, never print them.
        """
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if name == "embargo_rules" or value is None:
                continue
            secret = getattr(self, name)
            if hasattr(secret, "get_secret_value"):
                value = secret.get_secret_value()
            env[f"UNEMBARGO_{name.upper()}"] = str(value)
        return env

    def span_exporter(self) -> str:
        """The exporter in force: "console", "otlp" or "none"."""
        if self.otel_exporter == "auto":
            return "otlp" if self.otel_endpoint else "console"
        return self.otel_exporter

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
