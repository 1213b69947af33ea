"""What the web application needs to run: where Temporal and the database are, where the
Temporal UI is (for links), and whether actions are enabled and with which token.

The token comes from ``UNEMBARGO_WEB_TOKEN`` only, never from a command-line argument, and is
never rendered or logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from unembargo.models.settings import Settings


class WebSettings(BaseSettings):
    """``UNEMBARGO_WEB_*``: the address the page listens on and the actions' token."""

    model_config = SettingsConfigDict(env_prefix="UNEMBARGO_WEB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8088
    token: SecretStr | None = None


@dataclass(frozen=True)
class WebConfig:
    """One web application's configuration."""

    settings: Settings = field(default_factory=Settings)
    actions_enabled: bool = False
    token: SecretStr | None = field(default=None, repr=False)
    # Units per page of a flow's list.
    page_size: int = 50
    # Seconds a visibility count is reused (0: every page asks afresh).
    count_ttl: float = 5.0

    @property
    def temporal_address(self) -> str:
        return self.settings.temporal_address

    @property
    def namespace(self) -> str:
        return self.settings.temporal_namespace

    @property
    def database_url(self) -> SecretStr:
        return self.settings.database_url

    @property
    def temporal_ui_url(self) -> str:
        return self.settings.temporal_ui_url.rstrip("/")

    def workflow_url(self, workflow_id: str, run_id: str) -> str:
        """The Temporal UI's page of one run's history."""
        return (
            f"{self.temporal_ui_url}/namespaces/{quote(self.namespace, safe='')}/workflows/"
            f"{quote(workflow_id, safe='')}/{quote(run_id, safe='')}/history"
        )
