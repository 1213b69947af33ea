"""Butler formatter for the synthetic LSSTCam raw FITS files of the local stack.

``Butler.ingest`` imports the formatter class of every file it ingests, and the
LSSTCam raw formatter (obs_lsst, on top of lsst.afw) is not installable here. This
one reads with astropy only. Datasets of storage class ``Exposure`` still cannot
be returned by ``Butler.get`` without lsst.afw (the storage class's Python type);
the formatter itself is usable directly and from processes that have it.

Zips, ``getURI`` and ``ingest_zip`` keep the formatter's name as a string, so
processes that never read pixels need not import this module at all.
"""

from __future__ import annotations

import io
from typing import Any

from astropy.io import fits
from lsst.daf.butler import FormatterNotImplementedError, FormatterV2
from lsst.resources import ResourcePath


class SyntheticRawFormatter(FormatterV2):
    """Read a raw FITS file into an in-memory ``astropy.io.fits.HDUList``.

    Component ``metadata`` gives the primary header updated with the first image
    extension's header, as raw ingest merges them.
    """

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fz"})
    can_read_from_uri = True

    def read_from_uri(self, uri: ResourcePath, component: str | None = None, expected_size: int = -1) -> Any:
        hdus = _load(uri.read())
        if component is None:
            return hdus
        if component == "metadata":
            return merged_header(hdus)
        raise FormatterNotImplementedError(
            f"{self.name()} reads whole raws and their 'metadata' only, not component {component!r}"
        )


def _load(data: bytes) -> fits.HDUList:
    """Open FITS bytes and pull every HDU into memory, so no file handle outlives the read."""
    with fits.open(io.BytesIO(data), lazy_load_hdus=False) as hdus:
        return fits.HDUList([hdu.copy() for hdu in hdus])


def merged_header(hdus: fits.HDUList) -> fits.Header:
    """Primary header updated with the first extension's cards (structural keys skipped)."""
    merged = hdus[0].header.copy(strip=True)
    if len(hdus) > 1:
        merged.update(hdus[1].header.copy(strip=True))
    return merged
