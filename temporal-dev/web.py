"""The local stack's dataflow page: ``unembargo web`` on loopback (read-only: no ``--actions``)."""

from __future__ import annotations

import sys
import urllib.request

from unembargo.devstack import procs
from unembargo.models.settings import Settings
from unembargo.web.config import WebSettings

NAME = "web"


def address(settings: Settings) -> str:
    web = WebSettings()
    return f"http://{web.host}:{web.port}"


def health(settings: Settings) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"{address(settings)}/healthz", timeout=2):
            return True, "answering"
    except OSError as exc:
        return False, f"not answering ({exc.__class__.__name__})"


def ensure(settings: Settings) -> str:
    if health(settings)[0]:
        return "already up"
    argv = [sys.executable, "-m", "unembargo.cli.app", "web"]
    procs.start(settings.state_dir, NAME, argv)
    procs.poll(lambda: health(settings)[0], 60, "the dataflow page")
    return "started"


def stop(settings: Settings) -> bool:
    return procs.stop(settings.state_dir, NAME)
