"""Route features of the learned detector: a change against the flight plan (:data:`ROUTE_FEATURES`).

The straight lines flown before and after a change are taken as great circles (the course at the middle of
each line's window through the position there) and compared with every downstream waypoint of the plan:
which waypoint each line aims at and how closely it passes it, the rank of the aimed waypoint (a direct-to
skips the next one), the plan's own turn at a waypoint (both lines through it, the after line along the next
leg), the cross-track error to the route, and what the aircraft does on arriving at the aimed waypoint.
"""

from __future__ import annotations

import numpy as np

from atc_il.geometry import bearing_deg, haversine_nm, to_local_nm, wrap180

MAX_DOWNSTREAM = 8
LINE_WINDOW_S = 150.0          # the straight lines flown before and after a change: this long, clear of the turn
ARRIVAL_OFF_NM = 1.0           # off the line after by more than this: no longer flying it
ROUTE_TURN_RADIUS_NM = 12.0    # a change this close to a waypoint may be the plan's own turn there
ROUTE_FEATURES = (
    "wp_dist_nm",              # nearest plan waypoint to the change
    "pre_aim_miss_nm",         # the line before passes this close to a waypoint ahead (flying the plan: ~0)
    "post_aim_miss_nm",        # the line after passes this close to a downstream waypoint ahead of it
    "post_aim_rank",           # that waypoint's rank (1: the next one of the plan from the position after)
    "post_aim_along_nm",       # and its distance ahead
    "post_aim_err_deg",        # angle between the track after and the bearing to it
    "post_next_miss_nm",       # the line after against the plan's next waypoint (rank 1)
    "post_beyond_miss_nm",     # the line after against the best waypoint of rank >= 2 (a direct-to's target)
    "aim_changed",             # 1 when the waypoint aimed at after is another than before
    "route_turn_miss_nm",      # a turn at waypoint k onto the leg k -> k+1: both lines through k, the after one
                               # through k+1 (the plan's own turn: ~0)
    "xte_before_nm", "xte_after_nm",   # distance to the plan's route (polyline) at the ends of the two lines
    "trk_vs_leg_after_deg",    # the track after against the direction of the plan leg nearest to its end
    "aim_closest_nm", "aim_held_frac", "aim_follow_err_deg",    # arrival at the aimed waypoint (_arrival)
    "alt_after_vs_plan",
)


def _line_miss(wlat, wlon, lat, lon, trk_deg):
    """Distance ahead and signed lateral miss (NM, + = right) of waypoints from the great circle through (lat, lon)
    with course ``trk_deg`` there (as a flight management system flies it; a straight line in a local plane bends
    away from it by ~0.5 NM at 50 NM)."""
    d = haversine_nm(lat, lon, wlat, wlon)
    e = np.radians(wrap180(bearing_deg(lat, lon, wlat, wlon) - trk_deg))
    return d * np.cos(e), d * np.sin(e)


def _polyline_dist(wx, wy, px, py) -> float:
    """Distance (NM) from the point (px, py) to the polyline through (wx, wy)."""
    if len(wx) == 1:
        return float(np.hypot(wx[0] - px, wy[0] - py))
    ax, ay, dx, dy = wx[:-1], wy[:-1], np.diff(wx), np.diff(wy)
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return float(np.min(np.hypot(ax + t * dx - px, ay + t * dy - py)))


def route_geometry(p, plan, i: int, turn_s: float, spacing: float,
                   bounds: tuple[int, int]) -> tuple[dict, str | None]:
    """:data:`ROUTE_FEATURES` (NaN without a plan) and the direct-to waypoint of a change at grid index ``i``.

    The lines: the mean track over ``LINE_WINDOW_S`` ending (starting) ``g`` before (after) the change, through
    the position there; ``g`` is half the turn's duration at a typical rate plus the plot spacing, so that the
    lines are clear of the turn itself."""
    dt = p.dt
    g = int(np.ceil((turn_s / 2 + spacing) / dt))
    hw = max(2, int(round(LINE_WINDOW_S / dt)))
    lo, hi = bounds
    a1, b0 = max(lo, min(i - g, i - 2)), min(hi, max(i + g, i + 2))
    if a1 - lo < 2:
        a1 = min(i, lo + 2)
    if hi - b0 < 2:
        b0 = max(i, hi - 2)
    a0, b1 = max(lo, a1 - hw), min(hi, b0 + hw)
    trk_pre = float(np.mean(p.trk[a0:a1 + 1])) % 360.0 if a1 - a0 >= 2 else np.nan
    trk_post = float(np.mean(p.trk[b0:b1 + 1])) % 360.0 if b1 - b0 >= 2 else np.nan
    out = {f: np.nan for f in ROUTE_FEATURES}
    out["_trk_before"], out["_trk_after"] = trk_pre, trk_post
    waypoint = None
    if plan is None or len(plan[0]) < 1:
        return out, waypoint
    wlat, wlon, names = plan[:3]
    m = len(wlat)
    wx, wy = to_local_nm(wlat, wlon, p.lat[i], p.lon[i])
    pts = {j: to_local_nm(p.lat[j], p.lon[j], p.lat[i], p.lon[i]) for j in (a0, a1, b0, b1)}
    am, bm = (a0 + a1) // 2, (b0 + b1) // 2      # a mean track is the course at its window's middle
    out["wp_dist_nm"] = float(np.min(np.hypot(wx, wy)))
    out["xte_before_nm"] = _polyline_dist(wx, wy, *pts[a0])
    out["xte_after_nm"] = _polyline_dist(wx, wy, *pts[b1])
    miss_pre = along_pre = miss_post = along_post = None
    pre_aim = -1
    if np.isfinite(trk_pre):
        along_pre, miss_pre = _line_miss(wlat, wlon, p.lat[am], p.lon[am], trk_pre)
        along_pre = along_pre - float(haversine_nm(p.lat[am], p.lon[am], p.lat[a1], p.lon[a1]))
        nxt_pre = next_wp(wlat, wlon, p.lat[a1], p.lon[a1], trk_pre)
        cand = np.arange(nxt_pre, min(m, nxt_pre + MAX_DOWNSTREAM))
        cand = cand[along_pre[cand] > 0.5]
        if len(cand):
            pre_aim = int(cand[np.argmin(np.abs(miss_pre[cand]))])
            out["pre_aim_miss_nm"] = float(abs(miss_pre[pre_aim]))
    if np.isfinite(trk_post):
        along_post, miss_post = _line_miss(wlat, wlon, p.lat[bm], p.lon[bm], trk_post)
        along_post = along_post + float(haversine_nm(p.lat[b0], p.lon[b0], p.lat[bm], p.lon[bm]))
        nxt = next_wp(wlat, wlon, p.lat[b0], p.lon[b0], trk_post)
        if nxt < m and along_post[nxt] > 0:
            out["post_next_miss_nm"] = float(abs(miss_post[nxt]))
        down = np.arange(nxt, min(m, nxt + MAX_DOWNSTREAM))
        down = down[along_post[down] > 1.0]
        if len(down):
            b = int(down[np.argmin(np.abs(miss_post[down]))])
            out["post_aim_miss_nm"] = float(abs(miss_post[b]))
            out["post_aim_rank"] = float(b - nxt + 1)
            out["post_aim_along_nm"] = float(along_post[b])
            out["post_aim_err_deg"] = float(np.degrees(np.arctan2(abs(miss_post[b]), along_post[b])))
            waypoint = str(names[b])
            beyond = down[down > nxt]
            if len(beyond):
                out["post_beyond_miss_nm"] = float(np.min(np.abs(miss_post[beyond])))
            if pre_aim >= 0:
                out["aim_changed"] = float(b != pre_aim)
            out.update(_arrival(p, b0, bm, trk_post, wlat, wlon, b, float(along_post[b])))
        # the plan's leg nearest to the end of the line after
        if m >= 2:
            px, py = pts[b1]
            ax, ay, dx, dy = wx[:-1], wy[:-1], np.diff(wx), np.diff(wy)
            t = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
            j = int(np.argmin(np.hypot(ax + t * dx - px, ay + t * dy - py)))
            leg = float(np.degrees(np.arctan2(dx[j], dy[j])))
            out["trk_vs_leg_after_deg"] = float(abs(wrap180(trk_post - leg)))
    if miss_pre is not None and miss_post is not None:
        near = np.flatnonzero(np.hypot(wx, wy) < ROUTE_TURN_RADIUS_NM)
        best = np.inf
        for j in near:
            parts = [abs(miss_pre[j]), abs(miss_post[j])]
            if j + 1 < m:
                parts.append(abs(miss_post[j + 1]) if along_post[j + 1] > 0 else np.inf)
            best = min(best, max(parts))
        out["route_turn_miss_nm"] = float(best) if np.isfinite(best) else np.nan
    return out, waypoint


def _arrival(p, b0: int, bm: int, trk_post: float, wlat, wlon, b: int, along: float) -> dict:
    """What the track does after a change towards the waypoint ``b`` its line points at: how closely it passes it,
    which share of the way it stays on the line (within ``ARRIVAL_OFF_NM``), and whether it then follows the
    plan's next leg (a direct-to flies the plan on; a heading that happens to point there flies on straight)."""
    lat, lon = p.lat[b0:], p.lon[b0:]
    d = haversine_nm(lat, lon, wlat[b], wlon[b])
    c = int(np.argmin(d))
    _, dev = _line_miss(lat[:c + 1], lon[:c + 1], p.lat[bm], p.lon[bm], trk_post)
    off = np.flatnonzero(np.abs(dev) > ARRIVAL_OFF_NM)
    stop = int(off[0]) if len(off) else c
    flown = float(haversine_nm(lat[0], lon[0], lat[stop], lon[stop]))
    out = {"aim_closest_nm": float(d[c]), "aim_held_frac": float(min(1.0, flown / max(along, 1e-3)))}
    k0, k1 = b0 + c + int(round(30.0 / p.dt)), b0 + c + int(round(120.0 / p.dt))
    if d[c] < 3.0 and b + 1 < len(wlat) and k1 < len(p.trk):
        leg = float(bearing_deg(wlat[b], wlon[b], wlat[b + 1], wlon[b + 1]))
        out["aim_follow_err_deg"] = float(abs(wrap180(float(np.mean(p.trk[k0:k1 + 1])) - leg)))
    return out


def next_wp(wlat, wlon, lat, lon, trk) -> int:
    """First plan waypoint still ahead along the leg that leads to it (the first: along ``trk``)."""
    x, y = to_local_nm(wlat, wlon, lat, lon)
    px, py = np.r_[0.0, x[:-1]], np.r_[0.0, y[:-1]]
    dx, dy = x - px, y - py
    t = np.radians(trk if np.isfinite(trk) else 0.0)
    dx[0], dy[0] = np.sin(t), np.cos(t)
    idx = np.flatnonzero(x * dx + y * dy > 0)
    return int(idx[0]) if len(idx) else len(wlat)
