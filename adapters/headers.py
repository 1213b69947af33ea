"""Raw FITS files as the zip step sees them: whole (every HDU its headers announce is
there) and indexed (``_metadata_index.json``, astro_metadata_translator's format).

Works on bytes already downloaded, so no object is read twice. Only the first two
headers are parsed with astropy (what the metadata index needs); the others are
scanned for their structural keywords alone, which is enough to find where each
HDU ends and so to notice a truncated file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from astro_metadata_translator import merge_headers
from astro_metadata_translator.indexing import calculate_index
from astropy.io import fits

from unembargo.models.errors import RERUN, SourceMismatch

METADATA_INDEX = "_metadata_index.json"
FITS_SUFFIXES = (".fits", ".fz")

BLOCK = 2880
CARD = 80
_END = b"END" + b" " * 5
_STRUCTURAL = frozenset({"BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "GROUPS"})


def is_fits(name: str) -> bool:
    """Whether a member name is a FITS file (plain or tile-compressed)."""
    return name.lower().endswith(FITS_SUFFIXES)


def raw_metadata(name: str, data: bytes) -> dict[str, Any] | None:
    """Metadata of a raw for the index (None if not FITS), refusing empty or truncated files."""
    if not data:
        raise SourceMismatch(f"raw {name} is empty (0 bytes); re-send it to the embargo bucket")
    if not is_fits(name):
        return None
    primary, first = _walk(name, data)
    headers = [_plain(primary)]
    # As astro_metadata_translator reads raws (hdrnum -1): primary, updated with HDU 1.
    if primary.get("EXTEND") and first is not None:
        headers.append(_plain(first))
    return dict(merge_headers(headers, mode="overwrite"))


def metadata_index(headers: Mapping[str, Mapping[str, Any]]) -> bytes:
    """``_metadata_index.json``: common cards once, then each file's differences."""
    if not headers:
        return json.dumps({"__CONTENT__": "metadata", "__COMMON__": {}}).encode()
    # Plain dicts: merge_headers cannot attach its diff list to an astropy Header.
    index = calculate_index({name: dict(h) for name, h in sorted(headers.items())}, "metadata")
    return json.dumps(index, default=str).encode()


def _walk(name: str, data: bytes) -> tuple[fits.Header, fits.Header | None]:
    """Check every HDU is complete; return the primary and first extension headers."""
    if len(data) % BLOCK:
        raise _truncated(name, f"{len(data)} bytes is not a whole number of 2880-byte FITS blocks")
    if not data.startswith(b"SIMPLE  ="):
        raise SourceMismatch(
            f"raw {name} does not start with a FITS primary header (its first bytes are not "
            "'SIMPLE  ='): it is not a FITS file, or a damaged one. Check the object in the embargo "
            f"bucket (re-upload the camera's file, or remove it and its butler dataset), then {RERUN}."
        )
    parsed: list[fits.Header] = []
    pos, hdu = 0, 0
    while pos < len(data):
        # Anything after the last HDU that is not an extension is a FITS "special record".
        if hdu and not data.startswith(b"XTENSION", pos):
            break
        cards_end, data_start = _header_end(name, data, pos, hdu)
        cards = data[pos:cards_end]
        if len(parsed) < 2:
            parsed.append(_parse(name, cards, hdu))
        end = data_start + _padded(_data_size(name, _structural(cards), hdu))
        if end > len(data):
            raise _truncated(name, f"HDU {hdu} needs {end - len(data)} bytes more than the file has")
        pos, hdu = end, hdu + 1
    return parsed[0], (parsed[1] if len(parsed) > 1 else None)


def _header_end(name: str, data: bytes, start: int, hdu: int) -> tuple[int, int]:
    """(end of the END card, start of the data) of the header at ``start``."""
    for block in range(start, len(data), BLOCK):
        for card in range(block, block + BLOCK, CARD):
            if data[card : card + 8] == _END:
                return card + CARD, block + BLOCK
    raise _truncated(name, f"header of HDU {hdu} has no END card")


def _structural(cards: bytes) -> dict[str, Any]:
    """The keywords that size an HDU's data, read without a full header parse."""
    found: dict[str, Any] = {}
    for pos in range(0, len(cards), CARD):
        card = cards[pos : pos + CARD]
        key = card[:8].decode("ascii", "replace").strip()
        if (key in _STRUCTURAL or key.startswith("NAXIS")) and card[8:10] == b"= ":
            value = card[10:].split(b"/", 1)[0].strip().decode("ascii", "replace")
            found[key] = value == "T" if value in ("T", "F") else value
    return found


def _data_size(name: str, cards: Mapping[str, Any], hdu: int) -> int:
    """Bytes of data an HDU's header announces (FITS standard 4.4.1)."""
    try:
        naxis = int(cards["NAXIS"])
        dims = [int(cards[f"NAXIS{i}"]) for i in range(1, naxis + 1)]
        bits = abs(int(cards["BITPIX"]))
        gcount = int(cards.get("GCOUNT", 1))
        pcount = int(cards.get("PCOUNT", 0))
    except (KeyError, ValueError):
        raise SourceMismatch(f"raw {name}: HDU {hdu} lacks a valid BITPIX/NAXIS") from None
    if naxis == 0:
        return 0
    # Random groups: NAXIS1 = 0 and the group parameters count in PCOUNT.
    if cards.get("GROUPS") is True and dims[0] == 0:
        dims = dims[1:]
    return bits // 8 * gcount * (pcount + math.prod(dims))


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _parse(name: str, cards: bytes, hdu: int) -> fits.Header:
    try:
        return fits.Header.fromstring(cards.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise SourceMismatch(f"raw {name}: header of HDU {hdu} is not valid FITS") from None


def _plain(header: fits.Header) -> dict[str, Any]:
    """A header as a JSON-ready dict (commentary cards: the last one wins, as in the library)."""
    return {key: _value(value) for key, value in header.items() if key}


def _value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, fits.card.Undefined):
        return None
    return str(value)


def _truncated(name: str, detail: str) -> SourceMismatch:
    return SourceMismatch(
        f"raw {name} is truncated or corrupt ({detail}); re-send it to the embargo bucket "
        "and re-ingest it before unembargoing this exposure"
    )
