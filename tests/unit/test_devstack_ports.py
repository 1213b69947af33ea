"""Ports for a second local stack, chosen without any service running."""

from __future__ import annotations

import socket

from unembargo.devstack import procs


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_listened_on() -> None:
    """Ports for a second stack: none where Temporal's own random ports could land first."""
    ports = procs.free_ports(4)
    assert ports == list(range(ports[0], ports[0] + 4))
    assert ports[-1] < procs.EPHEMERAL_START
    listeners = [socket.create_server(("127.0.0.1", port)) for port in ports]
    for listener in listeners:
        listener.close()
