"""The carousel's Rucio calls: adopt or create a dataset's rule, read its replica locks, re-rule files.

A rule is found before one is made twice: Rucio answers DuplicateRule for a second rule of an
account on one DID and RSE expression, and the existing one is then adopted (so a create whose
answer was lost is adopted on its retry). Locks are read per rule (a few calls per check, not
one per file); a file's best lock over the rules read counts (OK, then REPLICATING, then STUCK).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from unembargo.models.carousel import OK, REPLICATING, STUCK, FileLock, LocksReceipt, RuleUnusable

if TYPE_CHECKING:
    from rucio.client import Client

_RANK = {OK: 0, REPLICATING: 1, STUCK: 2}


def _did(scope: str, name: str) -> dict[str, str]:
    return {"scope": scope, "name": name}


def find_rule(client: Client, account: str, scope: str, name: str, rse_expression: str) -> str | None:
    """The id of ``account``'s rule on ``scope:name`` to ``rse_expression``, if it has one."""
    filters = {"scope": scope, "name": name, "account": account, "rse_expression": rse_expression}
    for rule in client.list_replication_rules(filters=filters):
        return str(rule["id"])
    return None


def adopt_or_create(
    client: Client,
    account: str,
    scope: str,
    name: str,
    dest_rse: str,
    source_expression: str,
    rule_id: str | None = None,
    lifetime_s: int | None = None,
) -> tuple[str, bool]:
    """(rule id, adopted): the given rule (checked to stage this DID), or an existing one, or a new
    one (copies=1, grouping DATASET, from ``source_expression``, with ``lifetime_s``)."""
    from rucio.common.exception import DuplicateRule, RuleNotFound

    if rule_id is not None:
        try:
            rule = client.get_replication_rule(rule_id)
        except RuleNotFound:
            raise RuleUnusable(f"rule {rule_id} does not exist (cancelled or expired?)") from None
        if (rule["scope"], rule["name"]) != (scope, name):
            raise RuleUnusable(f"rule {rule_id} stages {rule['scope']}:{rule['name']}, not {scope}:{name}")
        return rule_id, True
    found = find_rule(client, account, scope, name, dest_rse)
    if found is not None:
        return found, True
    try:
        [made] = client.add_replication_rule(
            [_did(scope, name)],
            copies=1,
            rse_expression=dest_rse,
            grouping="DATASET",
            lifetime=lifetime_s,
            source_replica_expression=source_expression,
            activity="Staging",
        )
        return str(made), False
    except DuplicateRule:
        found = find_rule(client, account, scope, name, dest_rse)
        if found is None:
            raise
        return found, True


def dataset_locks(
    client: Client,
    scope: str,
    name: str,
    dest_rse: str,
    rule_ids: Sequence[str],
    lifetime_s: int | None = None,
) -> LocksReceipt:
    """The dataset's files and openness, each file's best lock, and rules that are gone; a rule's
    lifetime is refreshed when less than half of ``lifetime_s`` is left."""
    from rucio.common.exception import RuleNotFound

    did = client.get_did(scope, name)
    files = {f["name"]: f for f in client.list_files(scope, name)}
    best: dict[str, dict[str, Any]] = {}
    gone = []
    for rule_id in rule_ids:
        try:
            rule = client.get_replication_rule(rule_id)
            _refresh(client, rule, lifetime_s)
            locks = list(client.list_replica_locks(rule_id))
        except RuleNotFound:
            gone.append(rule_id)
            continue
        for lock in locks:
            if lock["rse"] != dest_rse or lock["scope"] != scope:
                continue
            held = best.get(lock["name"])
            if held is None or _RANK.get(lock["state"], 3) < _RANK.get(held["state"], 3):
                best[lock["name"]] = lock
    ok = [n for n, lock in best.items() if lock["state"] == OK]
    pfns = client.lfns2pfns(dest_rse, [f"{scope}:{n}" for n in ok], operation="read") if ok else {}
    found = {}
    for n, lock in best.items():
        meta = files.get(n, {})
        pfn = pfns.get(f"{scope}:{n}")
        found[n] = FileLock(
            n,
            str(lock["state"]),
            urlsplit(pfn).path if pfn else None,
            meta.get("bytes"),
            meta.get("adler32"),
        )
    return LocksReceipt(sorted(files), bool(did.get("open")), found, gone)


def _refresh(client: Client, rule: dict[str, Any], lifetime_s: int | None) -> None:
    expires = rule.get("expires_at")
    if not lifetime_s or expires is None:
        return
    if isinstance(expires, str):
        expires = datetime.strptime(expires, "%a, %d %b %Y %H:%M:%S %Z")
    left = (expires.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
    if left < lifetime_s / 2:
        client.update_replication_rule(rule["id"], {"lifetime": lifetime_s})


def other_source(client: Client, scope: str, files: Sequence[str], excluded: Sequence[str]) -> str | None:
    """An RSE holding an available replica of every file, not among ``excluded`` (first by name)."""
    held: set[str] | None = None
    for entry in client.list_replicas([_did(scope, n) for n in files]):
        rses = {rse for rse, state in (entry.get("states") or {}).items() if state == "AVAILABLE"}
        held = rses if held is None else held & rses
    candidates = sorted((held or set()) - set(excluded))
    return candidates[0] if candidates else None


def rule_files(
    client: Client,
    account: str,
    scope: str,
    files: Sequence[str],
    dest_rse: str,
    source: str,
    lifetime_s: int | None = None,
) -> list[str]:
    """A rule per file to ``dest_rse`` from ``source``; a file's existing rule gets the new source."""
    from rucio.common.exception import DuplicateRule

    made = []
    for name in files:
        try:
            [rule_id] = client.add_replication_rule(
                [_did(scope, name)],
                copies=1,
                rse_expression=dest_rse,
                lifetime=lifetime_s,
                source_replica_expression=source,
                activity="Staging",
            )
        except DuplicateRule:
            rule_id = find_rule(client, account, scope, name, dest_rse)
            if rule_id is None:
                raise
            client.update_replication_rule(rule_id, {"source_replica_expression": source})
        made.append(str(rule_id))
    return made
