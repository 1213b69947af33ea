"""What the client layer cannot work without, named for the command line (exit status 2)."""

from __future__ import annotations


class SourceUnavailable(RuntimeError):
    """A source could not be read; the command cannot decide anything without it."""

    def __init__(self, source: str, err: BaseException) -> None:
        super().__init__(f"could not read {source}: {type(err).__name__}: {err}")
        self.source = source


class TemporalUnreachable(RuntimeError):
    """The Temporal frontend did not answer the connection: nothing was asked of it."""
