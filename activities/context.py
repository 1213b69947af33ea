"""What every activity shares: settings, long-lived clients, the side-effect ledger,
heartbeats and fault-injection checkpoints.

One ``Resources`` per worker process: butlers are built once and cloned per thread
(a Butler is not thread-safe, a clone is cheap), so no activity pays for
constructing a butler.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session
from temporalio import activity

from unembargo.models.errors import UnsafeKey
from unembargo.models.exposure import Exposure
from unembargo.models.settings import Settings
from unembargo.models.tables import Effect, connect

if TYPE_CHECKING:
    from lsst.daf.butler import Butler
    from rucio.client import Client as RucioClient
    from sqlalchemy import Engine


class Resources:
    """Lazily built clients of the external systems, shared by a worker's activities."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._lock = threading.Lock()

    @cached_property
    def engine(self) -> Engine:
        return connect(self.settings.database_url.get_secret_value())

    @cached_property
    def s3(self) -> Any:
        """A boto3 S3 client (thread-safe) for the embargo bucket's endpoint."""
        from unembargo.adapters.s3 import connect as s3_connect

        return s3_connect(self.settings.s3_endpoint_url)

    def _butler(self, attr: str, repo: str, writeable: bool) -> Butler:
        from lsst.daf.butler import Butler

        from unembargo.adapters.s3 import use_endpoint_for_resources

        # A datastore in S3 (the embargo butler's raws) is read through lsst-resources.
        use_endpoint_for_resources(self.settings.s3_endpoint_url)

        butler = getattr(self._local, attr, None)
        if butler is None:
            with self._lock:
                base = self.__dict__.get(f"_base_{attr}")
                if base is None:
                    base = Butler.from_config(repo, writeable=writeable)
                    self.__dict__[f"_base_{attr}"] = base
            butler = base.clone()
            setattr(self._local, attr, butler)
        return butler

    def embargo_butler(self) -> Butler:
        """This thread's read-only view of the embargo butler."""
        return self._butler("embargo", self.settings.embargo_butler, writeable=False)

    def embargo_butler_writeable(self) -> Butler:
        """This thread's writeable embargo butler (the arrivals flow ingests into it)."""
        return self._butler("embargo_rw", self.settings.embargo_butler, writeable=True)

    def main_butler(self) -> Butler:
        """This thread's writeable main (destination) butler."""
        return self._butler("main", self.settings.main_butler, writeable=True)

    def rucio(self) -> RucioClient:
        """This thread's Rucio client."""
        client = getattr(self._local, "rucio", None)
        if client is None:
            from unembargo.adapters.rucio_client import connect as rucio_connect

            client = rucio_connect(self.settings)
            self._local.rucio = client
        return client

    def dest_path(self, relpath: str) -> Path:
        """Absolute destination path of a relative name, refusing any escape.

        The root must exist: a missing one is an unmounted disk, retried (transient),
        never created, so nothing lands on the mount point's parent filesystem.
        """
        root = self.settings.dest_root.resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"destination root {root} is missing (not mounted?); will retry")
        path = (root / relpath).resolve()
        if not path.is_relative_to(root) or path == root:
            raise UnsafeKey(f"{relpath!r} would leave the destination root; refused")
        return path

    def record(self, exposure: Exposure, step: str, action: str) -> None:
        """Write a ledger row just before carrying out a side effect."""
        with Session(self.engine) as session:
            session.add(Effect(obs_id=exposure.obs_id, step=step, action=action))
            session.commit()


def checkpoint(step: str, point: str) -> None:
    """Fault injection for crash tests: SIGKILL this worker once at ``step:point``.

    Armed only when ``UNEMBARGO_CRASH_AT`` names the point; a marker file in
    ``UNEMBARGO_CRASH_MARKERS`` makes each point fire once. Points: ``acting``
    (the step is running, nothing done yet) and ``acted`` (the side effect is done,
    the result not yet reported).
    """
    wanted = os.environ.get("UNEMBARGO_CRASH_AT", "")
    if f"{step}:{point}" not in wanted.split(","):
        return
    marker = Path(os.environ["UNEMBARGO_CRASH_MARKERS"]) / f"{step}-{point}"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.fsync(fd)
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def heartbeating(interval: float = 5.0) -> Iterator[None]:
    """Heartbeat from a side thread while a long blocking call runs in this one.

    At most every ``interval`` seconds and three times per heartbeat timeout, so a busy
    machine's delays never make a live activity look dead.
    """
    timeout = activity.info().heartbeat_timeout
    if timeout:
        interval = min(interval, timeout.total_seconds() / 3)
    stop = threading.Event()
    ctx = contextvars.copy_context()

    def beat() -> None:
        while not stop.wait(interval):
            ctx.run(activity.heartbeat)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Progress:
    """Progress heartbeats, at most one every ``every`` seconds: each one is a trip
    through the worker's event loop and payload converter, and a zip of small
    objects writes hundreds of members a second. (Liveness does not depend on
    them: ``heartbeating`` beats from a side thread.)"""

    def __init__(self, every: float = 1.0) -> None:
        self._every = every
        self._next = 0.0

    def beat(self, detail: str) -> None:
        now = time.monotonic()
        if now >= self._next and activity.in_activity():
            self._next = now + self._every
            activity.heartbeat(detail)
