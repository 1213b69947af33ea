"""The STOMP adapter against a real broker (the stack's embedded coilmq, in this process): a
subscription receives each message once with its headers; a broker that is down makes ``send``
raise (the publish activity's retry sends again with backoff) and the message is delivered once
it is back."""

from __future__ import annotations

import json

import pytest

from unembargo.adapters.stomp import BrokerUnavailable, StompConnection
from unembargo.devstack import broker, procs


def test_each_message_once_with_headers() -> None:
    [port] = procs.free_ports(1)
    srv, _ = broker.start_thread(port)
    try:
        with StompConnection("127.0.0.1", port) as sub, StompConnection("127.0.0.1", port) as pub:
            sub.subscribe("/queue/carousel-test")
            # The subscription is registered once a frame sent after it has a receipt.
            pub.send("/queue/warmup", "w", "warmup", "{}", 60)
            sent = [
                pub.send("/queue/carousel-test", f"id{i}", "file_stagein", json.dumps({"n": i}), 60)
                for i in range(5)
            ]
            assert sent == [f"id{i}" for i in range(5)]
            got = []
            while len(got) < 5 and (frame := sub.receive(5.0)) is not None:
                got.append(frame)
            assert sub.receive(0.3) is None  # nothing twice
        assert [f.command for f in got] == ["MESSAGE"] * 5
        assert [f.headers["msg_id"] for f in got] == sent
        assert [json.loads(f.body)["n"] for f in got] == list(range(5))
        head = got[0].headers
        assert head["type"] == "file_stagein" and head["persistent"] == "true"
        assert head["expiration"] == "60000" and int(head["expires"]) > 0
    finally:
        broker.stop_thread(srv)


def test_broker_down_then_up() -> None:
    [port] = procs.free_ports(1)
    with pytest.raises(BrokerUnavailable):
        StompConnection("127.0.0.1", port, timeout_s=1.0)
    srv, _ = broker.start_thread(port)
    try:
        with StompConnection("127.0.0.1", port) as sub:
            sub.subscribe("/queue/later")
            with StompConnection("127.0.0.1", port) as pub:
                pub.send("/queue/later", "late", "file_stagein", "{}", 60)
            frame = sub.receive(5.0)
        assert frame is not None and frame.headers["msg_id"] == "late"
    finally:
        broker.stop_thread(srv)
