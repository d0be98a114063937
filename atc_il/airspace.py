"""Airspace polygons and the point-in-polygon test used by the en-route filter of the conflicts, actions and
data-set stages (``pipelines/enroute.py``).

An airspace is read from:

* a GeoJSON file: a ``Polygon`` or ``MultiPolygon`` geometry, a ``Feature`` holding one, or a
  ``FeatureCollection``: with ``sector=NAME`` the feature whose property ``name``, ``id``, ``sector``,
  ``designator`` or ``ident`` equals NAME (case-insensitive; the GeoJSON feature ``id`` too), without it the
  union of every polygon feature. Coordinates are GeoJSON's ``[lon, lat]``; inner rings are holes;
* a CSV file of one polygon's vertices in order, columns ``lat, lon`` (or ``lat_deg, lon_deg``; a file without
  a header line is read as lat, lon). The ring closes by itself.

The test is the even-odd rule on the (lon, lat) plane, vectorised over points with numpy: a point is inside a
polygon when it is inside its outer ring and outside its holes; inside the airspace when inside any polygon. A
point on an edge may fall either way. Polygons must not cross the antimeridian (+/-180 deg).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atc_il.errors import ConfigError

NAME_KEYS = ("name", "id", "sector", "designator", "ident")


@dataclass(frozen=True)
class Airspace:
    """Polygons as lists of rings (each an (n, 2) array of lon, lat); the first ring of a polygon is its
    outline, the others its holes."""

    name: str
    polygons: tuple[tuple[np.ndarray, ...], ...]

    def contains(self, lat_deg: Any, lon_deg: Any) -> np.ndarray:
        """Element-wise: whether each point lies inside the airspace (NaN coordinates: False)."""
        lat = np.asarray(lat_deg, dtype=float).reshape(-1)
        lon = np.asarray(lon_deg, dtype=float).reshape(-1)
        inside = np.zeros(len(lat), dtype=bool)
        for rings in self.polygons:
            outer = rings[0]
            lo, hi = outer.min(axis=0), outer.max(axis=0)
            cand = np.flatnonzero(~inside & (lon >= lo[0]) & (lon <= hi[0]) & (lat >= lo[1]) & (lat <= hi[1]))
            if not len(cand):
                continue
            x, y = lon[cand], lat[cand]
            hit = _in_ring(outer, x, y)
            for hole in rings[1:]:
                hit &= ~_in_ring(hole, x, y)
            inside[cand[hit]] = True
        return inside


def _in_ring(ring: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd rule: the number of ring edges a ray from each point towards +x crosses is odd."""
    odd = np.zeros(len(x), dtype=bool)
    xi, yi = ring[:, 0], ring[:, 1]
    xj, yj = np.roll(xi, 1), np.roll(yi, 1)
    for a, b, c, d in zip(xi, yi, xj, yj):
        if b == d:
            continue                               # a horizontal edge is never crossed by a horizontal ray
        straddle = (b > y) != (d > y)
        odd ^= straddle & (x < (c - a) * (y - b) / (d - b) + a)
    return odd


def _ring(coords: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(coords, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a ring's coordinates are not numbers") from None
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ConfigError(f"{where}: a ring must be a list of [lon, lat] positions")
    arr = arr[:, :2]
    if len(arr) > 1 and (arr[0] == arr[-1]).all():
        arr = arr[:-1]
    if len(arr) < 3:
        raise ConfigError(f"{where}: a ring needs at least 3 distinct vertices, got {len(arr)}")
    if not np.isfinite(arr).all() or (np.abs(arr[:, 0]) > 180).any() or (np.abs(arr[:, 1]) > 90).any():
        raise ConfigError(f"{where}: coordinates outside lon -180..180 / lat -90..90 (GeoJSON order is [lon, lat])")
    return arr


def _polygons(geom: Any, where: str) -> list[tuple[np.ndarray, ...]]:
    if not isinstance(geom, dict):
        raise ConfigError(f"{where}: expected a GeoJSON geometry object")
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind == "Polygon":
        return [tuple(_ring(r, where) for r in coords or [])] if coords else []
    if kind == "MultiPolygon":
        return [tuple(_ring(r, where) for r in poly) for poly in coords or [] if poly]
    if kind == "GeometryCollection":
        return [p for g in geom.get("geometries") or [] for p in _polygons(g, where)]
    raise ConfigError(f"{where}: geometry type {kind!r} is not an area; use a Polygon or MultiPolygon")


def _feature_names(feature: dict) -> list[str]:
    props = feature.get("properties") or {}
    names = [props.get(k) for k in NAME_KEYS if props.get(k) is not None] + [feature.get("id")]
    return [str(n) for n in names if n is not None]


def _from_geojson(path: Path, sector: str | None) -> Airspace:
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a GeoJSON document ({type(exc).__name__}: {str(exc)[:120]})") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        feats = [f for f in doc.get("features") or [] if isinstance(f, dict)]
        if sector is not None:
            chosen = [f for f in feats if sector.lower() in (n.lower() for n in _feature_names(f))]
            if not chosen:
                known = sorted({n for f in feats for n in _feature_names(f)[:1]})
                raise ConfigError(f"{path}: no feature named {sector!r}; the features are named {known[:30]}")
            feats = chosen[:1]
        polys = [p for f in feats if f.get("geometry") for p in _polygons(f["geometry"], f"{path}")]
        name = sector or path.stem
    else:
        if sector is not None:
            raise ConfigError(f"{path}: --sector {sector!r} needs a FeatureCollection of named sectors, "
                              f"this is a {kind or 'non-GeoJSON document'}")
        geom = doc.get("geometry") if kind == "Feature" else doc
        polys = _polygons(geom, str(path))
        name = path.stem
    if not polys:
        raise ConfigError(f"{path}: no polygon in the airspace file")
    return Airspace(name, tuple(polys))


def _from_csv(path: Path, sector: str | None) -> Airspace:
    if sector is not None:
        raise ConfigError(f"{path}: a CSV polygon has no sectors; --sector needs a GeoJSON FeatureCollection")
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise ConfigError(f"{path}: empty polygon file")
    head = [c.strip().lower() for c in rows[0]]
    ilat, ilon = 0, 1
    if any(h in ("lat", "lat_deg", "latitude") for h in head):
        ilat = next(i for i, h in enumerate(head) if h in ("lat", "lat_deg", "latitude"))
        ilon = next((i for i, h in enumerate(head) if h in ("lon", "lon_deg", "longitude", "lng")), None)  # type: ignore[assignment]
        if ilon is None:
            raise ConfigError(f"{path}: a lat column but no lon column in the header {rows[0]}")
        rows = rows[1:]
    try:
        pts = [[float(r[ilon]), float(r[ilat])] for r in rows]
    except (ValueError, IndexError):
        raise ConfigError(f"{path}: every line must hold a latitude and a longitude (lat,lon)") from None
    return Airspace(path.stem, ((_ring(pts, str(path)),),))


def load_airspace(path: str | Path, sector: str | None = None) -> Airspace:
    """An :class:`Airspace` from a GeoJSON or CSV file (module doc); a one-line ConfigError when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such airspace file")
    if path.suffix.lower() == ".csv":
        return _from_csv(path, sector)
    return _from_geojson(path, sector)
