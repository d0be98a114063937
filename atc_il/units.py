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


# ---------------------------------------------------------------- ISA (International Standard Atmosphere)
_GAMMA, _R_AIR, _G0 = 1.4, 287.05287, 9.80665
_T0, _P0, _LAPSE, _H_TROP = 288.15, 101325.0, 0.0065, 11000.0
_A0 = (_GAMMA * _R_AIR * _T0) ** 0.5


def isa_temperature_pressure(alt_ft):
    """ISA temperature (K) and static pressure (Pa) at pressure altitude ``alt_ft`` (troposphere and the
    isothermal layer above it, to 20 km)."""
    import numpy as np
    h = np.minimum(np.asarray(alt_ft, float) * FT_M, 20000.0)
    t = np.where(h < _H_TROP, _T0 - _LAPSE * h, _T0 - _LAPSE * _H_TROP)
    p_trop = _P0 * (1.0 - _LAPSE * np.minimum(h, _H_TROP) / _T0) ** (_G0 / (_R_AIR * _LAPSE))
    p = np.where(h < _H_TROP, p_trop, p_trop * np.exp(-_G0 / (_R_AIR * t) * (h - _H_TROP)))
    return t, p


def tas_to_mach(tas_kt, alt_ft):
    """Mach number of a true airspeed at a pressure altitude (ISA)."""
    t, _ = isa_temperature_pressure(alt_ft)
    return (tas_kt * KT_MPS) / (_GAMMA * _R_AIR * t) ** 0.5


def tas_to_cas_kt(tas_kt, alt_ft):
    """Calibrated airspeed (kt) of a true airspeed (kt) at a pressure altitude (ISA, compressible flow).

    >>> round(float(tas_to_cas_kt(250.0, 0.0)), 6)
    250.0
    """
    import numpy as np
    _, p = isa_temperature_pressure(alt_ft)
    m = np.asarray(tas_to_mach(tas_kt, alt_ft), float)
    e = _GAMMA / (_GAMMA - 1.0)
    qc = p * ((1.0 + 0.5 * (_GAMMA - 1.0) * m * m) ** e - 1.0)
    return _A0 * np.sqrt(2.0 / (_GAMMA - 1.0) * ((qc / _P0 + 1.0) ** (1.0 / e) - 1.0)) / KT_MPS
