"""Named errors an operator can search for.

Bad input is never retried: each class below is listed in the retry policies'
``non_retryable_error_types`` (Temporal records an activity's exception under its
class name). Messages say what was found, what was expected and what to do; they
never carry credentials or file contents.
"""

from __future__ import annotations

# How an operator runs a failed exposure again once the cause is fixed.
RERUN = "rerun the exposure with `unembargo start --restart-failed`"


class BadInput(Exception):
    """Base of errors that retrying cannot fix; an operator must act."""


class DestinationFull(Exception):
    """The destination filesystem has no space left: transient, retried until space is freed."""


class IncompleteExposure(BadInput):
    """Fewer raws in the bucket than the exposure's expectedSensors list."""


class MissingExposure(BadInput):
    """The exposure is not in the embargo butler, or its folder is empty."""


class DestinationConflict(BadInput):
    """A file exists under a final name with other content; it is left untouched."""


class UnsafeKey(BadInput):
    """An object key or name that would escape its folder or is not a valid name."""


class SourceMismatch(BadInput):
    """The bucket and the embargo butler disagree, or an object is unreadable/truncated."""


class ReplicaConflict(BadInput):
    """Rucio holds a replica or dataset state that contradicts the files on disk."""


class DatasetConflict(BadInput):
    """The main butler holds the same data ID under another dataset id."""


class DimensionRecordConflict(BadInput):
    """The main butler's dimension record differs from the embargo butler's."""


class ChecksumMismatch(Exception):
    """A copy's bytes do not match the checksum they were sent with: transient in transit
    (sent again), never archived."""


class DeletionRefused(BadInput):
    """A deletion would leave fewer verified archive copies than the rule asks for."""


# Names for retry policies: Temporal matches on the exception's class name.
NON_RETRYABLE = [
    cls.__name__
    for cls in (
        BadInput,
        IncompleteExposure,
        MissingExposure,
        DestinationConflict,
        UnsafeKey,
        SourceMismatch,
        ReplicaConflict,
        DatasetConflict,
        DimensionRecordConflict,
        DeletionRefused,
    )
] + ["InvalidName"]
