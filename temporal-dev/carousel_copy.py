"""The local stack's hand stand-in for FTS3 in the carousel flow: the copy step of a staging rule.

Most carousel stack tests decide themselves when each file comes off tape, so they stage by hand
with this; the conveyor test runs Rucio's own conveyor with a copying transfertool instead
(rucio_copytool.py). This does what a transfer would for one file of a rule at a destination RSE:
copy the file from its source RSE's path (both RSEs' ``file`` protocol) to the destination's
path, check its adler32 against Rucio's, and mark the destination replica AVAILABLE, which Rucio
turns into an OK lock (and an OK rule when every lock is). Production uses FTS3 and Rucio's
conveyor; the flow only ever reads the locks, so it cannot tell them apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from unembargo.adapters.tape import adler32_of, copy_with_adler32
from unembargo.devstack.rucio_server import pfn_path

if TYPE_CHECKING:
    from rucio.client import Client


class CopyMismatch(RuntimeError):
    """The copy at the destination does not have the adler32 Rucio holds for the file."""


def stage_file(client: Client, scope: str, name: str, src_rse: str, dest_rse: str) -> Path:
    """Copy ``scope:name`` from ``src_rse`` to ``dest_rse``, verify it, mark it available; its path."""
    meta = client.get_metadata(scope, name)
    source = pfn_path(client, src_rse, scope, name)
    target = pfn_path(client, dest_rse, scope, name)
    _, adler32 = copy_with_adler32(source, target)
    if adler32 != meta["adler32"] or adler32_of(target)[1] != meta["adler32"]:
        target.unlink(missing_ok=True)
        raise CopyMismatch(f"{scope}:{name} copied to {target} with adler32 {adler32}, not {meta['adler32']}")
    client.update_replicas_states(dest_rse, [{"scope": scope, "name": name, "state": "A"}])
    return target


def waiting(client: Client, rule_id: str) -> list[str]:
    """Names of the rule's files whose lock is not OK yet (what a transfer tool would still move)."""
    return sorted(lock["name"] for lock in client.list_replica_locks(rule_id) if lock["state"] != "OK")
