"""POST /notify (client/listen.py) against a fake accepter: what 2xx and each 4xx mean.

The accepter stands in for Temporal's signal-with-start; a refused request must reach it
with nothing.
"""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from unembargo.adapters.notifications import parse_notification
from unembargo.client.listen import SECRET_HEADER, make_app
from unembargo.devstack.notify import aws_record, body, ceph_record
from unembargo.models.arrival import ListenSettings, ObjectEvent

SECRET = "correct horse battery staple"
BUCKET = "embargo"
KEY = "LSSTCam/20251231/MC_O_20251231_000010/MC_O_20251231_000010_R22_S11.fits"


class Accepter:
    def __init__(self) -> None:
        self.events: list[ObjectEvent] = []

    async def __call__(self, ev: ObjectEvent) -> str:
        self.events.append(ev)
        return "signalled"


@pytest.fixture
def server():
    accepted = Accepter()
    app = make_app(accepted, SECRET.encode(), BUCKET, "", ListenSettings(notify_max_body=16 * 1024))
    with TestClient(app) as client:
        yield client, accepted


def test_a_ceph_record_with_an_encoded_space_is_accepted(server):
    client, accepted = server
    key = "LSSTCam/20251231/MC_O_20251231_000010/shutter notes+1.txt"
    r = client.post("/notify", content=body(ceph_record(BUCKET, key, 12, '"abc"', SECRET)))
    assert r.status_code == 200 and r.json() == {"accepted": 1, "ignored": 0}
    (ev,) = accepted.events
    assert (ev.instrument, ev.day_obs, ev.obs_id, ev.name) == (
        "LSSTCam",
        20251231,
        "MC_O_20251231_000010",
        "shutter notes+1.txt",
    )
    assert ev.size == 12 and ev.etag == "abc" and ev.kind == "other"


def test_an_aws_record_with_the_secret_in_a_header_is_accepted(server):
    client, accepted = server
    r = client.post(
        "/notify", content=body(aws_record(BUCKET, KEY, 65, "d41d")), headers={SECRET_HEADER: SECRET}
    )
    assert r.status_code == 200 and accepted.events[0].kind == "raw"


def test_other_event_names_are_ignored_not_refused(server):
    client, accepted = server
    removed = {**ceph_record(BUCKET, KEY, 1, "x", SECRET), "eventName": "ObjectRemoved:Delete"}
    r = client.post("/notify", content=body(removed))
    assert r.status_code == 200 and r.json() == {"accepted": 0, "ignored": 1} and accepted.events == []


@pytest.mark.parametrize(
    ("payload", "headers", "status", "reason"),
    [
        (b"{not json", {}, 400, "not_json"),
        (b'{"Records": []}', {}, 400, "bad_event"),
        (b'{"records": 5}', {}, 400, "bad_event"),
        (body(ceph_record(BUCKET, KEY, 1, "x", "wrong")), {}, 401, "bad_secret"),
        (body(aws_record(BUCKET, KEY, 1, "x")), {}, 401, "bad_secret"),
        (body(aws_record(BUCKET, KEY, 1, "x")), {SECRET_HEADER: SECRET[:-1]}, 401, "bad_secret"),
        (body(ceph_record("other-bucket", KEY, 1, "x", SECRET)), {}, 400, "foreign_bucket"),
        (body(ceph_record(BUCKET, "LSSTCam/2025123/x/y.fits", 1, "x", SECRET)), {}, 400, "malformed_key"),
        (body(ceph_record(BUCKET, "LSSTCam/20251231/../y.fits", 1, "x", SECRET)), {}, 400, "malformed_key"),
        (
            body(ceph_record(BUCKET, "LSSTCam/20251231/MC_O_1/a/b.fits", 1, "x", SECRET)),
            {},
            400,
            "malformed_key",
        ),
        (body(ceph_record(BUCKET, "LSSTCam/20251231/MC_O_1/..", 1, "x", SECRET)), {}, 400, "malformed_key"),
        (b"{" + b" " * 20000 + b"}", {}, 413, "too_large"),
    ],
)
def test_bad_requests_are_refused_by_name_and_change_nothing(server, payload, headers, status, reason):
    client, accepted = server
    r = client.post("/notify", content=payload, headers=headers)
    assert r.status_code == status and r.json()["error"] == reason
    assert SECRET not in r.text
    assert accepted.events == []
    metrics = client.get("/metrics").text
    assert f'unembargo_notify_requests_total{{outcome="{reason}"}} 1' in metrics


def test_one_bad_record_refuses_the_whole_batch(server):
    client, accepted = server
    good = ceph_record(BUCKET, KEY, 1, "x", SECRET)
    forged = ceph_record(BUCKET, KEY.replace("R22_S11", "R22_S12"), 1, "x", "guess")
    r = client.post("/notify", content=body(good, forged))
    assert r.status_code == 401 and accepted.events == []


def test_a_temporal_failure_answers_503_so_the_sender_retries():
    async def down(ev: ObjectEvent) -> str:
        raise ConnectionError("frontend unavailable")

    app = make_app(down, SECRET.encode(), BUCKET, "", ListenSettings())
    with TestClient(app) as client:
        r = client.post("/notify", content=body(ceph_record(BUCKET, KEY, 1, "x", SECRET)))
    assert r.status_code == 503 and r.json()["error"] == "unavailable"


def test_the_prefix_is_part_of_the_key_rule():
    parsed = parse_notification(
        body(ceph_record(BUCKET, f"summit/{KEY}", 1, "x", SECRET)), SECRET.encode(), None, BUCKET, "summit/"
    )
    assert parsed.events[0].obs_id == "MC_O_20251231_000010"
    assert (
        json.loads(body(ceph_record(BUCKET, "a b", 1, "x", SECRET)))["Records"][0]["s3"]["object"]["key"]
        == "a+b"
    )
