"""The experiment's online storage, as the rawintegrity flow sees it: a folder of raw files.

A file's online path is ``<root>/<lfn>``; the flow reads it (size, adler32) and, last of all,
removes it. An online system with its own removal service replaces ``remove`` here.
"""

from __future__ import annotations

from pathlib import Path

from unembargo.adapters.tape import adler32_of
from unembargo.models.rawintegrity import check_lfn


class OnlineStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, lfn: str) -> Path:
        """Online path of ``lfn``; the storage must be there (an unmounted one is retried)."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"online storage {self.root} is not there (not mounted?); will retry")
        return self.root / check_lfn(lfn)

    def exists(self, lfn: str) -> bool:
        return self.path(lfn).is_file()

    def checksum(self, lfn: str) -> tuple[int, str]:
        """(size, adler32) of the online file."""
        return adler32_of(self.path(lfn))

    def remove(self, lfn: str) -> None:
        """Remove the online copy (a refusal, such as PermissionError, is retried by the caller)."""
        self.path(lfn).unlink()
