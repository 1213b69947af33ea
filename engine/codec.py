"""Optional encryption of every Temporal payload, for sites whose Temporal server is shared.

With ``payload_key_file`` set, workflow inputs, activity receipts, query results and
failure messages (with their stack traces) reach the server as AES-256-GCM ciphertext;
only clients and workers holding the key read them. Search attributes stay plaintext:
the web UI filters on them. Without a key file, payloads pass as they are, and an
encrypted one is refused with ``PayloadKeyError`` instead of an obscure decoding error.

    openssl rand -base64 32 > /etc/unembargo/payload-key && chmod 600 /etc/unembargo/payload-key
    UNEMBARGO_PAYLOAD_KEY_FILE=/etc/unembargo/payload-key unembargo worker --location slac-dest
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

# Metadata of an encrypted payload: its encoding, and which key sealed it.
ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32
NONCE_BYTES = 12


class PayloadKeyError(RuntimeError):
    """A payload key file that is missing or malformed, or a payload sealed with another key."""


def new_key() -> bytes:
    """A fresh 256-bit key (write it base64-encoded to the key file)."""
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def key_id(key: bytes) -> str:
    """A short public name of a key: operators compare it, the key itself stays secret."""
    return hashlib.sha256(b"unembargo-payload-key:" + key).hexdigest()[:16]


def read_key(path: Path) -> bytes:
    """The key in ``path``: one line, base64 of 32 bytes (``openssl rand -base64 32``)."""
    try:
        text = path.read_bytes().strip()
    except OSError as err:
        raise PayloadKeyError(
            f"cannot read the payload key file {path} ({err.strerror}); payload_key_file must name a "
            "readable file holding one base64 line of 32 bytes (openssl rand -base64 32)"
        ) from err
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_BYTES:
        raise PayloadKeyError(
            f"the payload key file {path} does not hold base64 of {KEY_BYTES} bytes (found {len(text)} "
            "characters); write one with `openssl rand -base64 32`, mode 0600"
        )
    return key


class PayloadCodecAES(PayloadCodec):
    """AES-256-GCM per payload: a random nonce, the serialized payload sealed, the key id beside it."""

    def __init__(self, key: bytes | None) -> None:
        self._aead = AESGCM(key) if key is not None else None
        self.key_id = key_id(key) if key is not None else None

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self._aead is None or self.key_id is None:
            return list(payloads)
        sealed = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            data = nonce + self._aead.encrypt(nonce, payload.SerializeToString(), None)
            sealed.append(Payload(metadata={"encoding": ENCODING, KEY_ID: self.key_id.encode()}, data=data))
        return sealed

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._open(payload) for payload in payloads]

    def _open(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        sealed_by = payload.metadata.get(KEY_ID, b"").decode(errors="replace") or "unknown"
        if self._aead is None:
            raise PayloadKeyError(
                f"a payload is encrypted (key id {sealed_by}) but no payload key is configured; "
                "set UNEMBARGO_PAYLOAD_KEY_FILE (or payload_key_file) to that key's file"
            )
        if sealed_by != self.key_id:
            raise PayloadKeyError(
                f"a payload was encrypted with key id {sealed_by}, but the configured payload key has id "
                f"{self.key_id}; point payload_key_file at the key this namespace's workers use"
            )
        try:
            plain = self._aead.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag as err:
            raise PayloadKeyError(
                f"a payload under key id {sealed_by} does not decrypt: it was altered, or was sealed "
                "with another key of the same id"
            ) from err
        return Payload.FromString(plain)


def data_converter(key_file: Path | None) -> DataConverter:
    """The converter of every client and worker: payloads and failure texts sealed when a key is set."""
    if key_file is None:
        return dataclasses.replace(DataConverter.default, payload_codec=PayloadCodecAES(None))
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=PayloadCodecAES(read_key(key_file)),
        # Failure messages and stack traces go into an encoded payload too, so they are sealed.
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


async def failure_text(converter: DataConverter, failure: Failure) -> str:
    """The message of a failure read from history, decrypted when the codec sealed it."""
    if not failure.HasField("encoded_attributes"):
        return failure.message
    copy = Failure()
    copy.CopyFrom(failure)
    decoded = await converter.decode_failure(copy)
    return str(getattr(decoded, "message", None) or decoded)
