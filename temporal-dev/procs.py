"""Start, find and stop the local stack's processes by recorded PIDs.

Each service started by ``unembargo dev up`` has ``<state>/run/<name>.pid`` holding
its PID and start time (from /proc), so ``down`` stops exactly what ``up`` started,
even after a reboot recycled the PID for something else.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Handles of the children this process started: dropping a running Popen warns
# (ResourceWarning), and keeping it lets ``stop`` reap the child (no zombie).
_children: dict[int, subprocess.Popen[bytes]] = {}

# Linux's default ip_local_port_range starts here: outgoing connections and bind(0) take
# ports at and above it.
EPHEMERAL_START = 32768


class StackError(RuntimeError):
    """A service of the local stack could not be started or reached."""


@dataclass(frozen=True)
class Recorded:
    """A process this stack started."""

    pid: int
    start_time: str
    argv: list[str]


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counts from after the ")" that closes the command name.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def pidfile(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.pid"


def logfile(state_dir: Path, name: str) -> Path:
    return state_dir / "log" / f"{name}.log"


def recorded(state_dir: Path, name: str) -> Recorded | None:
    """The live process recorded under ``name``, or None (stale records are removed)."""
    path = pidfile(state_dir, name)
    try:
        rec = Recorded(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _proc_start_time(rec.pid) != rec.start_time:
        path.unlink(missing_ok=True)
        return None
    return rec


def start(
    state_dir: Path,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Recorded:
    """Start ``argv`` detached in its own session, log to a file, record its PID."""
    log = logfile(state_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile(state_dir, name).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    start_time = _proc_start_time(proc.pid)
    if start_time is None:
        raise StackError(f"{name} exited at once; see {log}")
    rec = Recorded(pid=proc.pid, start_time=start_time, argv=list(argv))
    pidfile(state_dir, name).write_text(json.dumps(rec.__dict__))
    return rec


def stop(state_dir: Path, name: str, timeout: float = 20.0, first: signal.Signals = signal.SIGTERM) -> bool:
    """Stop the recorded process group of ``name`` with ``first``, then SIGKILL after ``timeout``;
    True if something was stopped."""
    rec = recorded(state_dir, name)
    if rec is None:
        return False
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(rec.pid, sig)
        except ProcessLookupError:
            break
        if poll(lambda: _proc_start_time(rec.pid) is None, timeout, raise_on_timeout=False):
            break
    child = _children.pop(rec.pid, None)
    if child is not None:
        child.wait(timeout)
    pidfile(state_dir, name).unlink(missing_ok=True)
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` consecutive TCP ports nothing holds now, below Linux's ephemeral range.

    A port from the ephemeral range (where ``bind(0)`` picks) can be taken before the
    service meant for it binds: Temporal's dev server alone binds five random ones there.
    """
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(20000, EPHEMERAL_START - count)
        block = list(range(start, start + count))
        if all(_bindable(host, port) for port in block):
            return block
    raise StackError(f"no {count} consecutive free ports on {host} below {EPHEMERAL_START}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def poll(
    check: Callable[[], bool],
    timeout: float,
    what: str = "condition",
    interval: float = 0.2,
    raise_on_timeout: bool = True,
) -> bool:
    """Call ``check`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - a service still starting may raise anything
            pass
        if time.monotonic() >= deadline:
            if raise_on_timeout:
                raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")
            return False
        time.sleep(interval)
