"""The carousel flow's activities: the Rucio rule and its locks, re-rules, and the broker.

Each checks its "done when" first: a rule is adopted before one is created (and DuplicateRule
adopts the one that exists), a file's re-rule reuses its rule, lock reads change nothing but an
expiring rule's lifetime. A publish succeeds only with the broker's receipt; without one it
raises BrokerUnavailable and the retry policy sends it again with backoff (same message id).
Every side effect is written to the ledger just before it is carried out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from unembargo.activities.context import Resources, checkpoint, heartbeating
from unembargo.adapters import carousel_rucio
from unembargo.adapters.stomp import StompConnection
from unembargo.models.carousel import (
    STEPS,
    CarouselSettings,
    InvalidRequest,
    LocksInput,
    LocksReceipt,
    PublishInput,
    PublishReceipt,
    ReruleInput,
    ReruleReceipt,
    RuleInput,
    RuleReceipt,
    Step,
    check_request_names,
)
from unembargo.models.exposure import Exposure


def _unit(key: str) -> Exposure:
    """The ledger keys rows by a unit's name: a DID or a message id."""
    return Exposure("carousel", 0, key, 0)


class CarouselActivities:
    """One instance per worker; Rucio clients are the worker's (one per thread)."""

    def __init__(self, resources: Resources, config: CarouselSettings | None = None) -> None:
        self.resources = resources
        self.config = config or CarouselSettings()

    @activity.defn(name=STEPS[Step.RULE].activity)
    def carousel_rule(self, inp: RuleInput) -> RuleReceipt:
        """Done when the dataset has this account's rule to the destination (adopted or made)."""
        from rucio.common.exception import DataIdentifierNotFound

        check_request_names(inp.scope, inp.name)
        with heartbeating():
            client = self.resources.rucio()
            try:
                client.get_did(inp.scope, inp.name)
            except DataIdentifierNotFound:
                raise InvalidRequest(f"Rucio has no dataset {inp.scope}:{inp.name}") from None
            self.resources.record(_unit(f"{inp.scope}:{inp.name}"), Step.RULE, "rule")
            rule_id, adopted = carousel_rucio.adopt_or_create(
                client,
                self.resources.settings.rucio_account,
                inp.scope,
                inp.name,
                inp.dest_rse,
                inp.source_expression,
                inp.rule_id,
                inp.lifetime_s,
            )
            checkpoint(Step.RULE.value, "acted")
            return RuleReceipt(rule_id, adopted)

    @activity.defn(name=STEPS[Step.LOCKS].activity)
    def carousel_locks(self, inp: LocksInput) -> LocksReceipt:
        """The dataset's files and their locks (changes nothing but an expiring rule's lifetime)."""
        with heartbeating():
            return carousel_rucio.dataset_locks(
                self.resources.rucio(), inp.scope, inp.name, inp.dest_rse, inp.rule_ids, inp.lifetime_s
            )

    @activity.defn(name=STEPS[Step.RERULE].activity)
    def carousel_rerule(self, inp: ReruleInput) -> ReruleReceipt:
        """Rules for stuck files from a source not tried (or the operator's); none left: (None, [])."""
        with heartbeating():
            client = self.resources.rucio()
            source = inp.source or carousel_rucio.other_source(client, inp.scope, inp.files, inp.excluded)
            if source is None:
                return ReruleReceipt(None, [])
            for name in inp.files:
                self.resources.record(_unit(f"{inp.scope}:{name}"), Step.RERULE, source)
            rules = carousel_rucio.rule_files(
                client,
                self.resources.settings.rucio_account,
                inp.scope,
                inp.files,
                inp.dest_rse,
                source,
                inp.lifetime_s,
            )
            return ReruleReceipt(source, rules)

    @activity.defn(name=STEPS[Step.PUBLISH].activity)
    def carousel_publish(self, inp: PublishInput) -> PublishReceipt:
        """Done when the broker sent its receipt for the message (at least once; the id dedups)."""
        c = self.config
        passcode = c.broker_passcode_file.read_text().strip() if c.broker_passcode_file else None
        checkpoint(Step.PUBLISH.value, "acting")
        with StompConnection(
            c.broker_host, c.broker_port, login=c.broker_login, passcode=passcode,
            vhost=c.broker_vhost, timeout_s=c.broker_timeout_s,
        ) as conn:  # fmt: skip
            self.resources.record(_unit(inp.message_id), Step.PUBLISH, "send")
            receipt = conn.send(inp.destination, inp.message_id, inp.type, inp.body, inp.ttl_s)
        checkpoint(Step.PUBLISH.value, "acted")
        return PublishReceipt(inp.message_id, receipt)


def carousel_activities(impl: CarouselActivities) -> dict[str, list[Callable[..., Any]]]:
    """Operation -> the flow's activities a location serving it runs (from the step table)."""
    found: dict[str, list[Callable[..., Any]]] = {}
    for spec in STEPS.values():
        found.setdefault(spec.location, []).append(getattr(impl, spec.activity))
    return found
