"""Tape replicas in the file catalogue (Rucio): what it holds of a batch, and adding what it lacks.

One ``list_replicas`` call per batch (up to 100 files) and one ``add_replicas`` call for those it
lacks, so a night's files cost a few calls a minute, not one per file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rucio.client import Client


@dataclass(frozen=True)
class Catalogued:
    """What Rucio knows of a file: its size and adler32, and its replica's state at the RSE."""

    bytes: int | None
    adler32: str | None
    state: str | None


@dataclass(frozen=True)
class Wanted:
    name: str
    size: int
    adler32: str


def held(client: Client, scope: str, rse: str, names: Sequence[str]) -> dict[str, Catalogued]:
    """Files Rucio knows among ``names`` (one call); absent names are unknown to it."""
    if not names:
        return {}
    entries = client.list_replicas([{"scope": scope, "name": n} for n in names], all_states=True)
    return {
        e["name"]: Catalogued(
            e.get("bytes"), (e.get("adler32") or "").lower() or None, (e.get("states") or {}).get(rse)
        )
        for e in entries
        if e["scope"] == scope
    }


def conflict(w: Wanted, found: Catalogued) -> str | None:
    """Why ``found`` cannot stand for ``w`` (another size or checksum), else None."""
    if found.bytes is not None and found.bytes != w.size or found.adler32 not in (None, w.adler32):
        return (
            f"ReplicaConflict: Rucio holds {w.name} with {found.bytes} bytes, adler32 {found.adler32}; "
            f"the tape copy has {w.size} bytes, adler32 {w.adler32}. Find out which is right before "
            "registering anything (nothing was changed)"
        )
    return None


def register(
    client: Client,
    scope: str,
    rse: str,
    wanted: Sequence[Wanted],
    before_add: Callable[[list[str]], None] = lambda names: None,
) -> tuple[list[str], list[str], dict[str, str]]:
    """Add the replicas at ``rse`` Rucio lacks; (added, already there, conflicts name -> why)."""
    found = held(client, scope, rse, [w.name for w in wanted])
    added: list[str] = []
    already: list[str] = []
    conflicts: dict[str, str] = {}
    todo: list[dict[str, Any]] = []
    for w in wanted:
        f = found.get(w.name)
        why = conflict(w, f) if f is not None else None
        if why is not None:
            conflicts[w.name] = why
        elif f is not None and f.state == "AVAILABLE":
            already.append(w.name)
        elif f is not None and f.state is not None:
            conflicts[w.name] = (
                f"ReplicaNotAvailable: Rucio holds the replica of {w.name} at {rse} in state {f.state}; "
                "declare it available or remove it, then retry"
            )
        else:
            todo.append({"scope": scope, "name": w.name, "bytes": w.size, "adler32": w.adler32})
    if todo:
        before_add([t["name"] for t in todo])
        client.add_replicas(rse=rse, files=todo)
        added = [t["name"] for t in todo]
    return added, already, conflicts


def is_registered(client: Client, scope: str, rse: str, name: str, size: int, adler32: str) -> bool:
    """True if Rucio holds an available replica of ``name`` at ``rse`` with this size and adler32."""
    f = held(client, scope, rse, [name]).get(name)
    return f is not None and f.state == "AVAILABLE" and f.bytes == size and f.adler32 == adler32


def names_under(client: Client, scope: str, folder: str) -> list[str]:
    """File names Rucio holds under ``folder/`` in ``scope`` (one listing)."""
    return list(client.list_dids(scope, [{"name": f"{folder}/*"}], did_type="file"))
