"""An ingest batch that fails because a service did not answer is retried, not recorded as bad files."""

from __future__ import annotations

import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

from unembargo.adapters.arrival_ingest import _outage


@pytest.mark.parametrize(
    "err",
    [
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1/x"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:1/x"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError("timed out"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_service_that_does_not_answer_is_an_outage(err: BaseException) -> None:
    assert _outage(err)


@pytest.mark.parametrize(
    "err", [ValueError("not a FITS file"), KeyError("DETNAME"), RuntimeError("conflict")], ids=repr
)
def test_a_bad_file_is_not_an_outage(err: BaseException) -> None:
    assert not _outage(err)
