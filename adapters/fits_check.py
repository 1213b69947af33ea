"""FITS files through astropy: is it valid FITS, and what its headers say.

Validation opens the file, reads every HDU's data (a truncated file reads short) and runs
astropy's verification; warnings are kept, unreadable structure or truncation is an error.
Header extraction reads the keywords operators query from the primary header, falling
back to the first extension (a multi-extension file keeps CCDSUM there).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unembargo.models.fits import HeaderValues

# Messages kept per file: a broken file can warn once per card.
_KEPT = 20
_REPORT_CHARS = 4000


# Warnings that mean the file is damaged: astropy reads on, an archive must not.
_FATAL = ("truncated", "corrupted", "Error validating header")


def _fatal(message: str) -> bool:
    return any(marker in message for marker in _FATAL)


@dataclass(frozen=True)
class FitsCheck:
    ok: bool
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def report(self, which: str) -> str:
        """``warnings`` or ``errors`` as one bounded text (for the diskfile row)."""
        return "\n".join(getattr(self, which))[:_REPORT_CHARS]

    def summary(self) -> str:
        return "; ".join(self.errors[:3]) or "valid"


def check(path: Path) -> FitsCheck:
    """astropy's verdict on ``path``: never raises for bad content, only for a missing file."""
    from astropy.io import fits

    errors: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, memmap=False, checksum=True, lazy_load_hdus=False) as hdul:
                for hdu in hdul:
                    _ = hdu.data
                hdul.verify("exception")
        except FileNotFoundError:
            raise
        except Exception as err:  # astropy raises OSError, VerifyError, ValueError, TypeError...
            errors.append(f"{type(err).__name__}: {err}"[:300])
    found = list(dict.fromkeys(str(w.message)[:300] for w in caught))
    # A short read or an HDU astropy had to drop is a warning to it and an error to an archive.
    errors += [m for m in found if _fatal(m)]
    kept = [m for m in found if not _fatal(m)]
    return FitsCheck(ok=not errors, warnings=kept[:_KEPT], errors=errors[:_KEPT])


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _binning(headers: list[Any]) -> str | None:
    for h in headers:
        ccdsum = _str(h.get("CCDSUM"))
        if ccdsum:
            parts = ccdsum.split()
            if len(parts) == 2:
                return f"{parts[0]}x{parts[1]}"
        if h.get("XBIN") is not None and h.get("YBIN") is not None:
            return f"{int(h['XBIN'])}x{int(h['YBIN'])}"
    return None


def _filter(h: Any) -> str | None:
    one = _str(h.get("FILTER"))
    if one:
        return one
    # Gemini's GMOS has two filter wheels: the filter is both, open ones left out.
    wheels = [
        f for f in (_str(h.get("FILTER1")), _str(h.get("FILTER2"))) if f and not f.lower().startswith("open")
    ]
    return "&".join(wheels) or None


def _when(h: Any) -> datetime | None:
    text = _str(h.get("DATE-OBS"))
    if not text:
        return None
    if "T" not in text and _str(h.get("TIME-OBS")):
        text = f"{text}T{h['TIME-OBS']}"
    try:
        found = datetime.fromisoformat(text.strip())
    except ValueError:
        try:
            found = datetime.fromisoformat(text[:10])
        except ValueError:
            return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def headers(path: Path) -> HeaderValues:
    """The keywords of ``path``'s headers (a file ``check`` found valid)."""
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            found = [hdu.header for hdu in hdul[:2]]
    primary = found[0]
    when = _when(primary)
    obstype = _str(primary.get("OBSTYPE")) or _str(primary.get("IMAGETYP"))
    return HeaderValues(
        instrument=_str(primary.get("INSTRUME")),
        observation_type=obstype.upper() if obstype else None,
        object=_str(primary.get("OBJECT")),
        filter=_filter(primary),
        exposure_time=_float(primary.get("EXPTIME")),
        binning=_binning(found),
        ut_datetime=when,
        ut_date=when.date() if when else None,
    )
