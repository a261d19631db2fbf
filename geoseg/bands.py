"""Band names: one alias table for every input (rasters, Sentinel-2 products, STAC,
xarray) and every model bundle.

>>> canonical_band("B02"), canonical_band("blue"), canonical_band("B4, central wavelength 665 nm")
('B2', 'B2', 'B4')
>>> canonical_band("B8A"), canonical_band("nir08"), canonical_band("B8")
('B8A', 'B8A', 'B8')
"""

from __future__ import annotations

import re

__all__ = ["BAND_ALIASES", "canonical_band", "is_sentinel2_band"]

#: Sentinel-2 band names in every spelling geoseg meets (product files "B02", Sen2Cor
#: and GDAL "B2", STAC common names, GDAL's "B4, central wavelength 665 nm"), by the
#: canonical name. B8 (10 m, broad NIR) and B8A (20 m, narrow NIR) are different bands.
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "B1": ("coastal",), "B2": ("blue",), "B3": ("green",), "B4": ("red",),
    "B5": ("rededge1", "rededge"), "B6": ("rededge2",), "B7": ("rededge3",), "B8": ("nir",),
    "B8A": ("nir08", "narrow_nir"), "B9": ("nir09", "water_vapour", "watervapor"), "B10": ("cirrus",),
    "B11": ("swir16",), "B12": ("swir22",),
}
_ALIAS = {a.lower(): k for k, v in BAND_ALIASES.items() for a in v}
_BAND_NUMBER = re.compile(r"^b0*(\d{1,2})(a?)$")


def canonical_band(name: str | None) -> str:
    """The canonical name of a band name (``"B02"``, ``"blue"``, ``"B2, central
    wavelength 490 nm"`` -> ``"B2"``; ``"B8A"``/``"nir08"`` -> ``"B8A"``); other names
    come back stripped, as they are (compared case-insensitively)."""
    s = (name or "").split(",")[0].strip()
    m = _BAND_NUMBER.match(s.lower())
    if m:
        return f"B{int(m.group(1))}{m.group(2).upper()}"
    return _ALIAS.get(s.lower(), s.lower())


def is_sentinel2_band(name: str) -> bool:
    """True for a Sentinel-2 band in any of its spellings."""
    return canonical_band(name) in BAND_ALIASES
