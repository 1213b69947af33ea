"""Transfer between buffers with rsync: a real tool, and a partial copy never shows under
the final name (rsync writes a temporary file beside it and renames it when complete).

The caller verifies the copy's checksum afterwards from the bytes at the destination.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

# rsync's exit codes worth trying again (connection and I/O trouble); others are a usage bug.
_TRANSIENT = {10, 11, 12, 23, 24, 30, 35}


def rsync(src: Path | str, dst: Path | str, timeout_s: float = 3600.0) -> float:
    """Copy one file with rsync; the seconds it took. Paths may be ``host:path`` for a remote."""
    tool = shutil.which("rsync")
    if tool is None:
        raise FileNotFoundError("rsync is not installed on this worker; install it (apt-get install rsync)")
    if isinstance(dst, Path):
        dst.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        [tool, "--whole-file", "--protect-args", "--", str(src), str(dst)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        what = f"rsync exited {done.returncode}: {done.stderr.strip()[-300:]}"
        raise (OSError(what) if done.returncode in _TRANSIENT else RuntimeError(what))
    return time.monotonic() - started
