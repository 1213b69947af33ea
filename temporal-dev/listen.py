"""The local stack's notification endpoint: ``unembargo listen`` on loopback.

Its shared secret is made once, in ``<state_dir>/notify-secret`` (mode 0600), and read
from there by the endpoint and by the seeder that plays the bucket.
"""

from __future__ import annotations

import os
import secrets
import sys
import urllib.request

from unembargo.devstack import procs
from unembargo.devstack.s3 import LOCAL_ENV
from unembargo.models.arrival import ListenSettings, secret_file
from unembargo.models.settings import Settings

NAME = "listen"


def url(settings: Settings) -> str:
    listen = ListenSettings()
    return f"http://{listen.listen_host}:{listen.listen_port}"


def address(settings: Settings) -> str:
    return f"{url(settings)}/notify"


def ensure_secret(settings: Settings) -> str:
    """The stack's notification secret, made (0600) if missing."""
    path = secret_file(settings.state_dir)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def health(settings: Settings) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"{url(settings)}/healthz", timeout=2):
            return True, "answering"
    except OSError as exc:
        return False, f"not answering ({exc.__class__.__name__})"


def ensure(settings: Settings) -> str:
    if health(settings)[0]:
        return "already up"
    ensure_secret(settings)
    argv = [sys.executable, "-m", "unembargo.cli.app", "listen"]
    procs.start(settings.state_dir, NAME, argv, env=LOCAL_ENV)
    procs.poll(lambda: health(settings)[0], 60, "the notification endpoint")
    return "started"


def stop(settings: Settings) -> bool:
    return procs.stop(settings.state_dir, NAME)
