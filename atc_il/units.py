"""Unit constants and conversions. Conversions happen only at the edges (readers, simulator, API).

Internally every column carries its unit in its name: ``alt_ft``, ``gs_kt``, ``vs_fpm``, ``dist_nm``.
"""

from __future__ import annotations

FT_M = 0.3048                 # metres per foot
NM_M = 1852.0                 # metres per nautical mile
KT_MPS = NM_M / 3600.0        # metres per second per knot
FPM_MPS = FT_M / 60.0         # metres per second per foot/minute
FL_FT = 100.0                 # feet per flight level
EARTH_RADIUS_M = 6371000.0    # mean Earth radius, as BlueSky's kwik geometry uses

# Unit name -> (canonical unit, factor to multiply by). Used by the mapping readers.
_CONVERSIONS: dict[str, dict[str, float]] = {
    "ft": {"ft": 1.0, "m": 1.0 / FT_M, "fl": FL_FT, "km": 1000.0 / FT_M},
    "kt": {"kt": 1.0, "m/s": 1.0 / KT_MPS, "mps": 1.0 / KT_MPS, "km/h": 1000.0 / 3600.0 / KT_MPS,
           "kmh": 1000.0 / 3600.0 / KT_MPS, "mph": 1609.344 / 3600.0 / KT_MPS},
    "fpm": {"fpm": 1.0, "ft/min": 1.0, "m/s": 1.0 / FPM_MPS, "mps": 1.0 / FPM_MPS},
    "deg": {"deg": 1.0, "rad": 57.29577951308232},
    "nm": {"nm": 1.0, "m": 1.0 / NM_M, "km": 1000.0 / NM_M},
    "s": {"s": 1.0, "ms": 1e-3, "min": 60.0},
}


def factor(from_unit: str, to_unit: str) -> float:
    """Multiplicative factor converting ``from_unit`` into the canonical ``to_unit``.

    >>> round(factor("m", "ft"), 4)
    3.2808
    """
    table = _CONVERSIONS.get(to_unit)
    if table is None:
        raise ValueError(f"unknown canonical unit {to_unit!r}; known: {sorted(_CONVERSIONS)}")
    key = from_unit.strip().lower()
    if key not in table:
        raise ValueError(f"cannot convert {from_unit!r} to {to_unit!r}; known: {sorted(table)}")
    return table[key]


def known_units(to_unit: str) -> list[str]:
    return sorted(_CONVERSIONS[to_unit])
