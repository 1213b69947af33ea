"""A small STOMP 1.2 client: publish with a broker receipt, and subscribe (consumers, tests).

A message is sent only once the broker said RECEIPT for it: ``send`` waits for the receipt of
its frame and raises BrokerUnavailable when none comes (refused, down, timed out), so the caller
(an activity under a retry policy) sends it again with backoff. A frame the broker took whose
receipt was lost is sent twice: STOMP is at-least-once, so every message carries an id of its
own (``msg_id``, the same on every resend) and consumers deduplicate by it.

Headers every message carries: ``persistent:true``, ``expires`` (ms since the epoch, ActiveMQ's
TTL) and ``expiration`` (ms from now, RabbitMQ's), ``type`` and ``msg_id``.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


class BrokerUnavailable(ConnectionError):
    """The broker refused the connection or the frame, or sent no receipt in time."""


_ESCAPES = {"\\": "\\\\", "\n": "\\n", ":": "\\c", "\r": "\\r"}
_UNESCAPES = {"\\\\": "\\", "\\n": "\n", "\\c": ":", "\\r": "\r"}


def _escape(value: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in value)


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        pair = value[i : i + 2]
        if pair in _UNESCAPES:
            out.append(_UNESCAPES[pair])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def encode(self) -> bytes:
        lines = [self.command, *(f"{_escape(k)}:{_escape(v)}" for k, v in self.headers.items())]
        if self.body:
            lines.append(f"content-length:{len(self.body)}")
        return ("\n".join(lines) + "\n\n").encode() + self.body + b"\0"


class StompConnection:
    """One connection to a broker (not thread-safe: one per thread or per call)."""

    def __init__(
        self, host: str, port: int, *, login: str | None = None, passcode: str | None = None,
        vhost: str | None = None, timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        self.timeout_s = timeout_s
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as err:
            raise BrokerUnavailable(f"STOMP broker at {host}:{port}: {err}") from err
        self._buf = b""
        # STOMP 1.2's host is the virtual host (RabbitMQ: "/"); none given, the broker's name.
        headers = {"accept-version": "1.2", "host": vhost or socket.getfqdn(), "heart-beat": "0,0"}
        if login is not None:
            headers["login"] = login
            headers["passcode"] = passcode or ""
        self._write(Frame("CONNECT", headers))
        reply = self.receive(timeout_s)
        if reply is None or reply.command != "CONNECTED":
            self.close()
            raise BrokerUnavailable(
                f"STOMP broker at {host}:{port} did not accept the connection: {_why(reply)}"
            )

    def __enter__(self) -> StompConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def _write(self, frame: Frame) -> None:
        try:
            self._sock.sendall(frame.encode())
        except OSError as err:
            raise BrokerUnavailable(f"STOMP broker connection lost: {err}") from err

    def send(self, destination: str, message_id: str, type: str, body: str, ttl_s: int) -> str:
        """Send one persistent message and wait for the broker's receipt; the receipt id."""
        now_ms = int(time.time() * 1000)
        headers = {
            "destination": destination,
            "content-type": "application/json",
            "persistent": "true",
            "expires": str(now_ms + ttl_s * 1000),
            "expiration": str(ttl_s * 1000),
            "type": type,
            "msg_id": message_id,
            "receipt": message_id,
        }
        self._write(Frame("SEND", headers, body.encode()))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self.receive(max(0.0, deadline - time.monotonic()))
            if (
                reply is not None
                and reply.command == "RECEIPT"
                and reply.headers.get("receipt-id") == message_id
            ):
                return message_id
            if reply is None or reply.command == "ERROR":
                raise BrokerUnavailable(f"no receipt for message {message_id}: {_why(reply)}")

    def subscribe(self, destination: str, sub_id: str = "0") -> None:
        self._write(Frame("SUBSCRIBE", {"destination": destination, "id": sub_id, "ack": "auto"}))

    def receive(self, timeout_s: float) -> Frame | None:
        """The next frame (heart-beats skipped), or None when none came in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as err:
                raise BrokerUnavailable(f"STOMP broker connection lost: {err}") from err
            if not chunk:
                raise BrokerUnavailable("STOMP broker closed the connection")
            self._buf += chunk

    def _parse(self) -> Frame | None:
        self._buf = self._buf.lstrip(b"\r\n")
        head_end = self._buf.find(b"\n\n")
        if head_end < 0:
            return None
        head = self._buf[:head_end].decode().replace("\r\n", "\n").split("\n")
        headers: dict[str, str] = {}
        for line in head[1:]:
            key, _, value = line.partition(":")
            headers.setdefault(_unescape(key), _unescape(value))
        start = head_end + 2
        if "content-length" in headers:
            end = start + int(headers["content-length"])
            if len(self._buf) < end + 1:
                return None
        else:
            end = self._buf.find(b"\0", start)
            if end < 0:
                return None
        body = self._buf[start:end]
        self._buf = self._buf[end + 1 :]
        return Frame(head[0], headers, body)


def _why(frame: Frame | None) -> str:
    if frame is None:
        return "no answer in time"
    return f"{frame.command} {frame.headers.get('message', '')}".strip()
