"""A FITS file's preview: its first image, zscale-stretched, as a PNG at most 1024 pixels wide.

ZScale (IRAF's display interval) sets the limits from the sky background, so one bright
star or a hot column does not flatten the rest; a mild asinh stretch keeps the faint
wings of stars visible without saturating the sky; NaNs (masked pixels) show black. FITS
rows run bottom up, so the image is flipped to look as ds9 shows it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from unembargo.models.fits_flow import InvalidFits

MAX_SIDE = 1024


def first_image(path: Path) -> object:
    """The first HDU's data with two or more axes (a cube's first plane), as float."""
    import numpy as np
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                data = hdu.data
                if data is not None and getattr(data, "ndim", 0) >= 2:
                    while data.ndim > 2:
                        data = data[0]
                    return np.asarray(data, dtype=np.float32)
    raise InvalidFits(f"{path.name}: no image HDU to preview")


def render(path: Path) -> tuple[bytes, int, int]:
    """PNG bytes of ``path``'s preview, and its width and height."""
    import numpy as np
    from astropy.visualization import AsinhStretch, ZScaleInterval
    from PIL import Image

    data = first_image(path)
    arr = np.asarray(data)
    finite = np.isfinite(arr)
    if not finite.any():
        scaled = np.zeros(arr.shape, dtype=np.uint8)
    else:
        filled = np.where(finite, arr, np.nanmin(arr[finite]))
        low, high = ZScaleInterval().get_limits(filled[finite])
        unit = np.clip((filled - low) / max(high - low, 1e-12), 0.0, 1.0)
        scaled = (np.asarray(AsinhStretch(0.5)(unit)) * 255).astype(np.uint8)
        scaled[~finite] = 0
    image = Image.fromarray(np.ascontiguousarray(np.flipud(scaled)))
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue(), image.width, image.height
