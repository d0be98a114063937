"""BlueSky behind a small typed interface, headless, in a dedicated child process.

BlueSky 1.1.1 keeps one simulation in module globals, so each :class:`BlueSkySim` owns one child
process (``multiprocessing`` *spawn* context) that runs BlueSky in-process and answers requests
over a pipe (see :mod:`simulator_adapters._worker`). Starting it costs about 3 s (6 s the first
time, while BlueSky builds its navigation-data cache, which is then shared through
``$ATC_IL_BLUESKY_CACHE`` or ``~/.cache/atc-il/bluesky``), so reuse one instance across episodes
with :meth:`BlueSkySim.reset`.

Units: BlueSky is SI inside; everything here is in the canonical units (ft, kt, fpm, NM, deg).
:meth:`BlueSkySim.states` returns rows of the track contract, :meth:`BlueSkySim.clear` rows of the
action contract (``atc_il.schemas``), so the simulator feeds the same pipelines as a radar.

Traps handled here (shared/bluesky-notes.md): the configuration file sets ``prefer_compiled =
False`` (the compiled geometry gives wrong conflicts) and detection defaults to ``CSTATEBASED``;
replies of detached BlueSky are captured and error replies raise :class:`SimulatorError`;
``sim.reset`` forgets DT, CD/CR and zone settings, so :meth:`reset` applies them again.

Trap not handled, by design: while MVP resolution is active for an aircraft
(:meth:`resolution_active`), BlueSky ignores autopilot commands to it (a ``HDG`` only takes effect
after the closest point of approach). :meth:`clear` still applies and returns the clearance.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atc_il.errors import SimulatorError
from atc_il.schemas import ACTION_TYPES, TRACK_SCHEMA, action_id
from atc_il.units import FPM_MPS, FT_M, KT_MPS, NM_M

__all__ = ["SimConfig", "AircraftInit", "BlueSkySim", "default_cache_dir"]

_ID_RE = re.compile(r"^[A-Z0-9_\-]+$")
_CD_METHODS = ("OFF", "STATEBASED", "CSTATEBASED")
_RESOLUTIONS = ("OFF", "MVP")
CONFLICT_COLUMNS = ["time", "flight_id_1", "flight_id_2", "dist_nm", "dalt_ft", "tcpa_s", "dcpa_nm",
                    "tin_s", "qdr_deg", "conflict", "los"]


@dataclass(frozen=True)
class SimConfig:
    """Simulation settings, applied again at every :meth:`BlueSkySim.reset`.

    ``extra_commands`` are stack commands run after the settings at each reset (for instance
    ``("RMETHH HDG",)``: MVP's options survive ``sim.reset`` in BlueSky, so set them every time).
    """
    dt_s: float = 1.0
    seed: int = 0
    cd_method: str = "CSTATEBASED"
    rpz_nm: float = 5.0
    hpz_ft: float = 1000.0
    lookahead_s: float = 600.0
    resolution: str = "OFF"
    noise: bool = False
    t0: str = "2024-01-01T00:00:00Z"
    extra_commands: tuple[str, ...] = ()

    def __post_init__(self):
        if not (self.dt_s > 0 and math.isfinite(self.dt_s)):
            raise SimulatorError(f"SimConfig.dt_s must be a positive number of seconds, got {self.dt_s!r}")
        if self.cd_method not in _CD_METHODS:
            raise SimulatorError(f"SimConfig.cd_method {self.cd_method!r}: use one of {_CD_METHODS}")
        if self.resolution not in _RESOLUTIONS:
            raise SimulatorError(f"SimConfig.resolution {self.resolution!r}: use one of {_RESOLUTIONS}")
        if self.resolution != "OFF" and self.cd_method == "OFF":
            raise SimulatorError("SimConfig.resolution needs conflict detection: set cd_method")
        for name in ("rpz_nm", "hpz_ft", "lookahead_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise SimulatorError(f"SimConfig.{name} must be a positive number, got {v!r}")
        try:
            _utc(self.t0)
        except (ValueError, TypeError) as exc:
            raise SimulatorError(f"SimConfig.t0 {self.t0!r} is not a timestamp: {exc}") from exc
        object.__setattr__(self, "extra_commands", tuple(self.extra_commands))


@dataclass(frozen=True)
class AircraftInit:
    """An aircraft to create: position, heading (deg true), altitude (ft), CAS (kt), and a route.

    ``route`` holds ``(name, lat_deg, lon_deg, alt_ft or None)`` waypoints, added in order with
    ``ADDWPT`` under their own names (so ``clear(..., "direct_to", waypoint=name)`` works) and
    flown with LNAV and VNAV on. Identifiers are upper case, as BlueSky upper-cases callsigns.
    """
    flight_id: str
    _: KW_ONLY
    actype: str = "A320"
    lat_deg: float
    lon_deg: float
    hdg_deg: float
    alt_ft: float
    cas_kt: float
    route: Sequence[tuple[str, float, float, float | None]] = ()

    def __post_init__(self):
        for name in ("flight_id", "actype"):
            v = getattr(self, name)
            if not isinstance(v, str) or not _ID_RE.match(v):
                raise SimulatorError(f"AircraftInit.{name} {v!r}: use upper-case letters, digits, '_' or '-' "
                                     "(BlueSky upper-cases identifiers and splits on spaces and commas)")
        for name in ("lat_deg", "lon_deg", "hdg_deg", "alt_ft", "cas_kt"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
                raise SimulatorError(f"AircraftInit {self.flight_id}: {name} must be a finite number, got {v!r}")
        if not -90 <= self.lat_deg <= 90 or not -180 <= self.lon_deg <= 180:
            raise SimulatorError(f"AircraftInit {self.flight_id}: position {self.lat_deg}, {self.lon_deg} out of range")
        if not 2.0 < self.cas_kt < 1000.0:
            raise SimulatorError(f"AircraftInit {self.flight_id}: cas_kt {self.cas_kt} outside 2..1000 kt "
                                 "(BlueSky would read a value below 1 as a Mach number)")
        route = []
        for wp in self.route:
            if len(wp) != 4:
                raise SimulatorError(f"AircraftInit {self.flight_id}: route entries are (name, lat, lon, alt_ft|None), got {wp!r}")
            name, lat, lon, alt = wp
            if not isinstance(name, str) or not _ID_RE.match(name):
                raise SimulatorError(f"AircraftInit {self.flight_id}: waypoint name {name!r}: use upper-case letters, digits, '_' or '-'")
            if any(name == r[0] for r in route):
                raise SimulatorError(f"AircraftInit {self.flight_id}: waypoint {name} twice in the route")
            route.append((name, float(lat), float(lon), None if alt is None else float(alt)))
        object.__setattr__(self, "route", tuple(route))


def _utc(t) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def default_cache_dir() -> Path:
    """Where the BlueSky navigation-data cache is shared between workers."""
    env = os.environ.get("ATC_IL_BLUESKY_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "atc-il" / "bluesky"


class BlueSkySim:
    """One BlueSky simulation in its own process. Use as a context manager, or call :meth:`close`.

    ``timeout_s`` bounds every request (startup included); a child that dies or exceeds it raises
    :class:`SimulatorError` with the tail of its log, and the instance is closed. After
    construction the simulation is already reset with ``config.seed``.
    """

    def __init__(self, config: SimConfig = SimConfig(), workdir: str | Path | None = None, *,
                 timeout_s: float = 600.0, cache_dir: str | Path | None = None):
        if mp.current_process().daemon:
            raise SimulatorError("BlueSkySim cannot start its child process from a daemonic process "
                                 "(a Dask worker?): start Dask workers with the configuration "
                                 "distributed.worker.daemon = False, or use threads")
        self.config = config
        self.timeout_s = float(timeout_s)
        self.scenario: str | None = None
        self._t0_ns = int(_utc(config.t0).value)
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="atc-il-bluesky-")) if workdir is None else Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "bluesky.log"
        cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
        self._proc = None
        self._conn = None
        from simulator_adapters._worker import worker_main
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        t = time.perf_counter()
        self._proc = ctx.Process(target=worker_main, name="bluesky-sim", daemon=True,
                                 args=(child, str(self.workdir), str(cache), config.dt_s, str(self.log_path)))
        self._proc.start()
        child.close()
        self._conn = parent
        try:
            info = self._wait("start", self.timeout_s)
            self.pid: int = info["pid"]
            self.bluesky_init_s: float = info["init_s"]
            self.reset()
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t

    # ------------------------------------------------------------------ process plumbing
    def _log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def _dead(self, what: str) -> SimulatorError:
        code = None
        if self._proc is not None:
            self._proc.join(2)
            code = self._proc.exitcode
        tail = self._log_tail()
        self._shutdown(kill=True)
        self.close()
        msg = f"BlueSky child process died during {what} (exit code {code})"
        if what == "start":
            msg += (" before it could start BlueSky; its error is on stderr above. The child uses the "
                    "'spawn' start method: a script that creates a BlueSkySim at import time must "
                    "guard it with `if __name__ == '__main__':`")
        return SimulatorError(msg + (f"; log tail:\n{tail}" if tail else ""))

    def _wait(self, what: str, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ready = self._conn.poll(0.2)
            except (OSError, ValueError):
                raise self._dead(what) from None
            if ready:
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    raise self._dead(what) from None
                break
            if not self._proc.is_alive():
                if self._conn.poll(0):
                    continue
                raise self._dead(what)
            if time.monotonic() > deadline:
                self._shutdown(kill=True)
                self.close()
                raise SimulatorError(f"BlueSky did not answer {what} within {timeout_s:g} s; the child "
                                     "was stopped (raise timeout_s for long runs)")
        if msg[0] == "ok":
            return msg[1]
        _, text, tb = msg
        if what == "start":
            tail = self._log_tail()
            self._shutdown(kill=True)
            raise SimulatorError(f"{text}\n{tb or ''}{tail}")
        raise SimulatorError(text + (f"\n(child traceback)\n{tb}" if tb else ""))

    def _call(self, name: str, *args, **kwargs):
        if self._conn is None:
            raise SimulatorError(f"BlueSkySim is closed; cannot {name}")
        try:
            self._conn.send((name, args, kwargs))
        except (BrokenPipeError, OSError):
            raise self._dead(name) from None
        return self._wait(name, self.timeout_s)

    def _shutdown(self, kill: bool = False) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None:
            if not kill and conn is not None and proc.is_alive():
                try:
                    conn.send(("close", (), {}))
                    if conn.poll(5):
                        conn.recv()
                except (OSError, EOFError):
                    pass
            proc.join(0 if kill else 5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Stop the child process and remove the working directory it was given by default."""
        self._shutdown()
        if self._own_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BlueSkySim:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    # ------------------------------------------------------------------ simulation
    def reset(self, seed: int | None = None, scenario: str | None = None) -> None:
        """Clear traffic and time (``sim.reset``), then apply DT, SEED, ASAS, DTLOOK, ZONER, ZONEDH,
        RESO, NOISE and ``config.extra_commands`` again. ``scenario`` names the ``source`` column."""
        cfg = dataclasses.asdict(self.config)
        self._call("reset", cfg, self.config.seed if seed is None else int(seed))
        self.scenario = scenario

    def create(self, aircraft: Sequence[AircraftInit]) -> None:
        """Create aircraft (``CRE``), add their routes (``ADDWPT``) and engage LNAV/VNAV on them."""
        items = list(aircraft)
        for ac in items:
            if not isinstance(ac, AircraftInit):
                raise SimulatorError(f"create() takes AircraftInit objects, got {type(ac).__name__}")
        ids = [ac.flight_id for ac in items]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise SimulatorError(f"create(): duplicate flight_id(s) {dup}")
        self._call("create", [dataclasses.asdict(ac) for ac in items])

    def step(self, n: int = 1) -> float:
        """Advance ``n`` steps of ``config.dt_s``; returns the simulation time in seconds.

        Commands queued inside BlueSky (``SCHEDULE``, scenario files) run during the steps; if
        BlueSky rejects one, :class:`SimulatorError` is raised after the ``n`` steps were done."""
        if int(n) < 0:
            raise SimulatorError(f"step(n): n must be >= 0, got {n}")
        return self._call("step", int(n))

    def delete(self, flight_id: str) -> None:
        self._call("delete", flight_id)

    def stack(self, *commands: str) -> list[str]:
        """Run raw BlueSky stack commands now (``;`` separates several); returns BlueSky's replies.

        An error reply (unknown command or aircraft, bad argument) raises :class:`SimulatorError`
        with BlueSky's message; commands before it on the same call have run."""
        return self._call("stack", [str(c) for c in commands])

    def time_of(self, simt: float) -> pd.Timestamp:
        """The UTC wall time of a simulation time (``config.t0 + simt``)."""
        return pd.Timestamp(self._t0_ns + round(simt * 1e9), unit="ns", tz="UTC")

    def states(self) -> pd.DataFrame:
        """Current state of every aircraft as rows of the track contract (``TRACK_SCHEMA``)."""
        s = self._call("states")
        n = len(s["id"])
        src = f"bluesky:{self.scenario or s['scenario'] or 'sim'}"
        ids = pd.array(s["id"], dtype="str")
        # Built with the dtypes that conform(df, TRACK_SCHEMA) gives, without its pyarrow round
        # trip (5x slower; this runs every step in closed-loop use). Tested against conform.
        return pd.DataFrame({
            "time": self._times(s["simt"], n),
            "flight_id": ids, "callsign": ids.copy(),
            "lat_deg": s["lat"], "lon_deg": s["lon"], "alt_ft": s["alt"] / FT_M,
            "gs_kt": s["gs"] / KT_MPS, "trk_deg": s["trk"] % 360.0, "vs_fpm": s["vs"] / FPM_MPS,
            "cfl_ft": s["selalt"] / FT_M, "source": pd.array([src] * n, dtype="str"),
        }, columns=TRACK_SCHEMA.names)

    def _times(self, simt: float, n: int) -> pd.DatetimeIndex:
        ns = np.full(n, self._t0_ns + round(simt * 1e9), dtype=np.int64)
        return pd.DatetimeIndex(ns.astype("datetime64[ns]")).tz_localize("UTC")

    def conflicts(self) -> pd.DataFrame:
        """BlueSky's own conflict detection now: one row per pair (``flight_id_1 < flight_id_2``).

        ``conflict``: in ``cd.confpairs`` (predicted loss within the look-ahead); ``los``: in
        ``cd.lospairs``. ``tin_s`` is BlueSky's ``tLOS``; ``qdr_deg`` the bearing from 1 to 2.
        Detection runs every ``asas_dt`` (1 s), on the state at the last step. For cross-checks."""
        c = self._call("conflicts")
        rows = c["rows"]
        df = pd.DataFrame({
            "time": self._times(c["simt"], len(rows)),
            "flight_id_1": pd.array([r["id1"] for r in rows], dtype="str"),
            "flight_id_2": pd.array([r["id2"] for r in rows], dtype="str"),
            "dist_nm": np.array([r["dist"] for r in rows], dtype=float) / NM_M,
            "dalt_ft": np.array([r["dalt"] for r in rows], dtype=float) / FT_M,
            "tcpa_s": np.array([r["tcpa"] for r in rows], dtype=float),
            "dcpa_nm": np.array([r["dcpa"] for r in rows], dtype=float) / NM_M,
            "tin_s": np.array([r["tlos"] for r in rows], dtype=float),
            "qdr_deg": np.array([r["qdr"] for r in rows], dtype=float),
            "conflict": np.array([r["conflict"] for r in rows], dtype=bool),
            "los": np.array([r["los"] for r in rows], dtype=bool),
        }, columns=CONFLICT_COLUMNS)
        return df

    def resolution_active(self) -> dict[str, bool]:
        """``bs.traf.cr.active`` per aircraft: True while MVP flies a resolution for it.

        While it is True BlueSky ignores autopilot commands to that aircraft (HDG/ALT/SPD take
        effect only once the resolution ends, after the closest point of approach)."""
        return self._call("resolution_active")

    def clear(self, flight_id: str, action_type: str, value: float | None = None, *,
              waypoint: str | None = None, relative: bool = False) -> dict[str, Any]:
        """Issue a controller clearance now and return it as a row of the action contract.

        - ``heading``: ``value`` deg true (``relative``: signed change, + = right); ``HDG`` (LNAV off).
        - ``altitude``: ft (``relative``: change, + = climb); ``ALT`` (VNAV off).
        - ``speed``: kt CAS (``relative``: change); ``SPD``.
        - ``direct_to``: ``waypoint`` = a waypoint of the aircraft's route; ``DIRECT`` (LNAV on).
        - ``resume``: back to own navigation, ``LNAV ON`` and ``VNAV ON`` (needs a route).

        ``value`` in the returned row is the signed change from the state at the time of the
        clearance (heading/direct_to: from the current heading/track), ``target_value`` the absolute
        cleared value (deg, ft, kt CAS). A non-numeric ``value`` string is passed to BlueSky as is
        (e.g. ``"FL300"``). Raises :class:`SimulatorError` with BlueSky's message when it rejects
        the command, and when the command did not take effect in BlueSky's autopilot state.
        Note: while MVP resolution is active for the aircraft, BlueSky ignores the command until
        the resolution ends (see :meth:`resolution_active`)."""
        if action_type not in ACTION_TYPES:
            raise SimulatorError(f"unknown action_type {action_type!r}; expected one of {ACTION_TYPES}")
        if action_type in ("direct_to", "resume") and value is not None:
            raise SimulatorError(f"{action_type} takes no value (direct_to takes waypoint=...)")
        out = self._call("clear", flight_id, action_type, value, waypoint, bool(relative))
        t = self.time_of(out["simt"])
        fid = flight_id.upper()
        return {
            "action_id": action_id(fid, t, action_type),
            "time": t, "flight_id": fid, "action_type": action_type,
            "value": float(out["value"]), "unit": out["unit"],
            "target_value": None if out["target_value"] is None else float(out["target_value"]),
            "waypoint": out.get("waypoint"), "source": "simulator", "confidence": 1.0,
        }
