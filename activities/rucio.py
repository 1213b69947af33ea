"""Rucio steps of an exposure: register its zip and yaml in place (step 4), then close
its Obs dataset and tag it for backup (step 5).

Each activity reads Rucio first and returns ``already_done`` without writing when the
step's "done when" holds; otherwise it writes with batched calls and reads back.
Reading back matters: ``add_replicas`` of an existing file answers OK but keeps the old
size and checksums. Transient failures (connection refused, 5xx, timeouts) propagate
unchanged so Temporal retries with backoff; a contradiction is a ReplicaConflict and
nothing in Rucio is overwritten to make progress.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rucio.common.exception import (
    DataIdentifierNotFound,
    UnsupportedOperation,
)
from temporalio import activity

from unembargo.activities.context import Resources, checkpoint, heartbeating
from unembargo.models import names
from unembargo.models.errors import RERUN, BadInput, ReplicaConflict
from unembargo.models.exposure import (
    STEPS,
    Exposure,
    RegisterInput,
    RegisterReceipt,
    Step,
    StepInput,
    TagReceipt,
)

if TYPE_CHECKING:
    from rucio.client import Client
from unembargo.adapters.rucio import (
    BACKUP_TAG,
    Todo,
    Wanted,
    add_dataset,
    attachment_specs,
    check_on_disk,
    close_dataset,
    conflicts,
    exposure_files,
    held_files,
    register_datasets,
    replica_spec,
    require_open_dataset,
    require_registered,
    tag_state,
    todo,
)


def wanted_files(resources: Resources, inp: RegisterInput) -> list[Wanted]:
    """The zip and yaml to register, refusing receipts that describe some other file."""
    wanted = []
    for name, receipt in zip(exposure_files(inp.exposure), (inp.zip, inp.yaml), strict=True):
        if receipt.relpath != name:
            raise BadInput(
                f"receipt for {receipt.relpath!r} passed where {name!r} was expected: "
                "the register step only registers the exposure's own zip and yaml"
            )
        wanted.append(Wanted(name, receipt, resources.dest_path(name)))
    return wanted


class RucioActivities:
    """Steps 4 and 5: sync activities, each a handful of Rucio calls."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    @property
    def scope(self) -> str:
        return self.resources.settings.rucio_scope

    @property
    def rse(self) -> str:
        return self.resources.settings.rucio_rse

    @activity.defn(name=STEPS[Step.REGISTER].activity)
    def register_in_rucio(self, inp: RegisterInput) -> RegisterReceipt:
        """Step 4: zip and yaml registered in place and attached to their Tract and Obs datasets."""
        # Heartbeats keep a slow (not dead) Rucio call from tripping the heartbeat timeout.
        with heartbeating():
            return self._register(inp)

    @activity.defn(name=STEPS[Step.TAG].activity)
    def tag_obs_dataset(self, inp: StepInput) -> TagReceipt:
        """Step 5: the Obs dataset closed, then tagged for backup."""
        with heartbeating():
            return self._tag(inp.exposure)

    def _register(self, inp: RegisterInput) -> RegisterReceipt:
        exposure = inp.exposure
        wanted = wanted_files(self.resources, inp)
        datasets = register_datasets(exposure, inp.tracts)
        client = self.resources.rucio()
        missing = self._register_todo(client, wanted, datasets)
        if missing.empty:
            return RegisterReceipt(files=len(wanted), datasets=datasets, already_done=True)
        checkpoint(Step.REGISTER, "acting")
        check_on_disk(self.resources.settings.dest_root.resolve(), wanted)
        self._ensure_datasets(client, exposure, missing.attachments)
        self._write(client, exposure, missing)
        checkpoint(Step.REGISTER, "acted")
        left = self._register_todo(client, wanted, datasets)
        if not left.empty:
            raise ReplicaConflict(f"after registering, Rucio still lacks: {left.describe()}")
        activity.logger.info("registered %s in %d datasets", exposure.obs_id, len(datasets))
        return RegisterReceipt(files=len(wanted), datasets=datasets, already_done=False)

    def _register_todo(self, client: Client, wanted: list[Wanted], datasets: list[str]) -> Todo:
        """Read what Rucio holds; raise on contradictions, else return what is missing."""
        held = held_files(client, self.scope, self.rse, [w.name for w in wanted])
        found = conflicts(wanted, held, self.scope, self.rse)
        if found:
            raise ReplicaConflict(
                "; ".join(found) + ". Nothing was overwritten (Rucio keeps a file's first size and "
                f"checksums): find out which is right, fix the file or the Rucio entry, then {RERUN}"
            )
        return todo(wanted, held, datasets)

    def _ensure_datasets(self, client: Client, exposure: Exposure, attachments: dict[str, list[str]]) -> None:
        """Every dataset that lacks files is open (checked before any write), or is created."""
        absent = []
        for name, lacking in attachments.items():
            try:
                require_open_dataset(client.get_did(self.scope, name), lacking)
            except DataIdentifierNotFound:
                absent.append(name)
        for name in absent:
            self.resources.record(exposure, Step.REGISTER, f"add_dataset {name}")
            add_dataset(client, self.scope, name)

    def _write(self, client: Client, exposure: Exposure, missing: Todo) -> None:
        """One add_replicas call, then one attach call, each only for what is missing."""
        if missing.replicas:
            self.resources.record(exposure, Step.REGISTER, "add_replicas")
            client.add_replicas(self.rse, [replica_spec(self.scope, w) for w in missing.replicas])
        if missing.attachments:
            self.resources.record(exposure, Step.REGISTER, "attach")
            try:
                client.add_files_to_datasets(
                    attachment_specs(self.scope, missing.attachments), ignore_duplicate=True
                )
            except UnsupportedOperation as err:
                # Only a dataset closed since _ensure_datasets looked gets here.
                raise ReplicaConflict(f"Rucio refused to attach ({missing.describe()}): {err}") from err

    def _tag(self, exposure: Exposure) -> TagReceipt:
        name = names.obs_dataset(exposure.instrument, exposure.day_obs, exposure.obs_id)
        client = self.resources.rucio()
        state = tag_state(client, self.scope, name)
        if state.done:
            return TagReceipt(dataset=name, metadata=BACKUP_TAG, already_done=True)
        checkpoint(Step.TAG, "acting")
        require_registered(client, self.scope, name, exposure_files(exposure))
        # Close first: the backup request then only ever appears on a final dataset. A crash
        # between the two leaves a closed, untagged dataset, which nothing acts on; the retry tags it.
        if state.open:
            self.resources.record(exposure, Step.TAG, "close")
            close_dataset(client, self.scope, name)
        if state.value is None:
            self.resources.record(exposure, Step.TAG, "set_metadata")
            client.set_metadata(self.scope, name, names.BACKUP_KEY, names.BACKUP_VALUE)
        checkpoint(Step.TAG, "acted")
        after = tag_state(client, self.scope, name)
        if not after.done:
            raise ReplicaConflict(
                f"after tagging, Obs dataset {self.scope}:{name} is open={after.open} with "
                f"{names.BACKUP_KEY}={after.value!r}"
            )
        return TagReceipt(dataset=name, metadata=BACKUP_TAG, already_done=False)
