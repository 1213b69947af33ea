"""S3 bucket notifications (Ceph RGW and AWS event records) as object events, or a named refusal.

Pure: bytes in, events or a ``Rejected`` out, so the endpoint's contract is tested without
a server. Nothing of a refused request is echoed back beyond the reason's name and a short
detail; the secret never is.

    >>> body = b'{"Records": [{"eventName": "ObjectCreated:Put", "opaqueData": "s3cret",'
    >>> body += b' "s3": {"bucket": {"name": "embargo"}, "object": {"key":'
    >>> body += b' "LSSTCam/20251231/MC_O_20251231_000010/a+b.json", "size": 3, "eTag": "x"}}}]}'
    >>> [e.name for e in parse_notification(body, b"s3cret", None, "embargo", "").events]
    ['a b.json']
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from unembargo.models.arrival import ObjectEvent, parse_key
from unembargo.models.names import InvalidName

# Reasons a request is refused: (HTTP status, what it means). docs/arrivals.md lists them.
REASONS: dict[str, tuple[int, str]] = {
    "not_json": (400, "the body is not JSON"),
    "bad_event": (400, "the JSON is not an S3 event notification (no Records[] of s3 records)"),
    "bad_secret": (401, "no record carries the shared secret (opaqueData or the X-Unembargo-Secret header)"),
    "foreign_bucket": (400, "a record names a bucket other than the embargo bucket"),
    "malformed_key": (400, "a key is not <instrument>/<YYYYMMDD>/<obs_id>/<file> under the prefix"),
    "too_large": (413, "the body is larger than notify_max_body"),
    "busy": (503, "too many requests in flight; retry"),
}
CREATED = ("ObjectCreated:", "s3:ObjectCreated:")


class Rejected(Exception):
    """A request refused with a named reason; nothing was done."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        return REASONS[self.reason][0]


@dataclass
class Parsed:
    """The object-created events of a notification, and how many records were not such."""

    events: list[ObjectEvent] = field(default_factory=list)
    ignored: int = 0


def secret_matches(given: str | bytes | None, secret: bytes) -> bool:
    """Constant-time comparison (hmac.compare_digest) of a presented secret."""
    if given is None:
        return False
    raw = given.encode() if isinstance(given, str) else given
    return hmac.compare_digest(raw, secret)


def parse_notification(
    body: bytes, secret: bytes, header_secret: str | None, bucket: str, prefix: str
) -> Parsed:
    """Events of a notification body; Rejected (naming why) if any record is bad."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("not_json") from None
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise Rejected("bad_event", "expected a non-empty Records list")
    header_ok = secret_matches(header_secret, secret)
    # Every record must carry the secret (or the request the header): one forged record in
    # a batch refuses the whole batch.
    if not header_ok and not all(secret_matches(_str(r.get("opaqueData")), secret) for r in records):
        raise Rejected("bad_secret")
    parsed = Parsed()
    for i, record in enumerate(records):
        name = record.get("eventName")
        if not isinstance(name, str):
            raise Rejected("bad_event", f"record {i} has no eventName")
        if not name.startswith(CREATED):
            parsed.ignored += 1
            continue
        s3 = record.get("s3")
        obj = s3.get("object") if isinstance(s3, dict) else None
        bucket_info = s3.get("bucket") if isinstance(s3, dict) else None
        if (
            not isinstance(obj, dict)
            or not isinstance(bucket_info, dict)
            or not isinstance(obj.get("key"), str)
        ):
            raise Rejected("bad_event", f"record {i} lacks s3.bucket or s3.object.key")
        if bucket_info.get("name") != bucket:
            raise Rejected("foreign_bucket", f"record {i}")
        key = unquote_plus(obj["key"])
        try:
            size = int(obj.get("size") or 0)
            parsed.events.append(parse_key(prefix, key, size, _str(obj.get("eTag")) or ""))
        except InvalidName as err:
            raise Rejected("malformed_key", f"record {i}: {_short(str(err))}") from None
        except (TypeError, ValueError):
            raise Rejected("bad_event", f"record {i} has a size that is not a number") from None
    return parsed


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
