"""The child side of :class:`simulator_adapters.bluesky_sim.BlueSkySim`: BlueSky in its own process.

BlueSky keeps its whole simulation in module globals (``bs.traf``, ``bs.sim``), so one process
holds exactly one simulation. :func:`worker_main` is the target of a ``spawn`` process: it calls
``bs.init`` once, then serves requests ``(name, args, kwargs)`` from a pipe, calling
``_Engine.op_<name>`` and answering ``("ok", result)`` or ``("err", message, traceback)``.

Nothing here is imported by the parent process except through the ``spawn`` machinery, and
BlueSky is imported only inside :func:`worker_main`. Values cross the pipe in BlueSky's SI units
(metres, m/s, degrees); the parent converts them to the canonical units at the edge.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from atc_il.errors import SimulatorError
from simulator_adapters.bluesky_replies import capture_replies

_SENDER = b"atc-il"          # a sender id makes BlueSky report unknown commands instead of forwarding them
_NAVDATA_CACHE = "navdata.p"
_COMMAND_TYPES = ("heading", "altitude", "speed", "direct_to", "resume")


def write_config(path: Path, dt_s: float, cache_path: Path) -> None:
    """BlueSky's default configuration with the settings this adapter relies on.

    ``prefer_compiled = False``: the compiled geometry of 1.1.1 gives wrong conflicts
    (shared/bluesky-notes.md, trap 1). No plugins, so nothing else draws random numbers.
    """
    text = (importlib.resources.files("bluesky") / "resources" / "default.cfg").read_text()
    overrides = {
        "prefer_compiled": "False",
        "enabled_plugins": "[]",
        "simdt": repr(float(dt_s)),
        "cache_path": repr(str(cache_path)),
    }
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            continue
        lines.append(line)
    lines += [f"{k} = {v}" for k, v in overrides.items()]
    path.write_text("\n".join(lines) + "\n")


def _fmt(x: float) -> str:
    """A number as BlueSky's text parsers read it (no exponent notation)."""
    return f"{float(x):.6f}"


def _wrap180(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


class _Engine:
    """BlueSky, initialised once in this process, behind the operations the parent calls."""

    def __init__(self, workdir: Path, cache_dir: Path | None, dt_s: float):
        self.workdir = workdir
        own_cache = workdir / "cache"
        shared = cache_dir / _NAVDATA_CACHE if cache_dir is not None else None
        use_shared = shared is not None and shared.is_file()
        cfg = workdir / "atc-il-bluesky.cfg"
        write_config(cfg, dt_s, cache_dir if use_shared else own_cache)

        import bluesky as bs
        import bluesky.stack as bstack
        import bluesky.stack.simstack as simstack

        t = time.perf_counter()
        bs.init(mode="sim", detached=True, workdir=str(workdir), configfile=str(cfg))
        self.init_s = time.perf_counter() - t
        if shared is not None and not use_shared and (own_cache / _NAVDATA_CACHE).is_file():
            # Publish the navdata cache atomically so the next worker starts in ~3 s, not ~6 s.
            try:
                shared.parent.mkdir(parents=True, exist_ok=True)
                tmp = shared.with_name(f"{_NAVDATA_CACHE}.{os.getpid()}.tmp")
                shutil.copyfile(own_cache / _NAVDATA_CACHE, tmp)
                os.replace(tmp, shared)
            except OSError:
                pass

        self.bs = bs
        self.simstack = simstack
        from bluesky.tools import aero
        from bluesky.traffic.asas import ConflictDetection, ConflictResolution
        self.aero = aero
        self.CD, self.CR = ConflictDetection, ConflictResolution

        # Detached mode drops every reply (trap 3): capture them instead.
        self.replies: list[tuple[int, str]] = capture_replies(simstack, bstack)

    # ------------------------------------------------------------------ stack
    def _line(self, line: str) -> list[str]:
        """Run one stack command now (without advancing time); raise on BlueSky's error reply."""
        line = line.strip()
        if not line:
            return []
        self.replies.clear()
        self.simstack.process([(line, _SENDER)])
        replies = list(self.replies)
        self.replies.clear()
        errors = [text.strip() for flags, text in replies if flags != self.bs.BS_OK]
        if errors:
            raise SimulatorError(f"BlueSky rejected {line!r}: {' | '.join(errors)}")
        return [text for _, text in replies if text]

    def op_stack(self, commands) -> list[str]:
        out: list[str] = []
        for cmd in commands:
            for line in str(cmd).split(";"):
                out += self._line(line)
        return out

    # ------------------------------------------------------------------ episode
    def op_reset(self, cfg: dict, seed: int) -> float:
        bs = self.bs
        bs.sim.reset()
        self.replies.clear()
        self.op_stack([
            f"DT {float(cfg['dt_s'])!r}",
            f"SEED {int(seed)}",
            f"ASAS {cfg['cd_method']}",
            f"DTLOOK {_fmt(cfg['lookahead_s'])}",
            f"ZONER {_fmt(cfg['rpz_nm'])}",
            f"ZONEDH {_fmt(cfg['hpz_ft'])}",
            f"RESO {cfg['resolution']}",
            f"NOISE {'ON' if cfg['noise'] else 'OFF'}",
            *cfg.get("extra_commands", ()),
        ])
        # Check that the settings took: a wrong name must not leave CD silently off.
        cd_name = self.CD.selected().__name__.upper()
        want_cd = "CONFLICTDETECTION" if cfg["cd_method"] == "OFF" else cfg["cd_method"]
        cr_name = self.CR.selected().__name__.upper()
        want_cr = "CONFLICTRESOLUTION" if cfg["resolution"] == "OFF" else cfg["resolution"]
        if cd_name != want_cd or cr_name != want_cr:
            raise SimulatorError(f"BlueSky selected CD {cd_name} and CR {cr_name}; "
                                 f"asked for {cfg['cd_method']} and {cfg['resolution']}")
        return float(bs.sim.simt)

    def op_create(self, aircraft: list[dict]) -> int:
        bs, ft = self.bs, self.aero.ft
        for ac in aircraft:
            fid = ac["flight_id"]
            self._line(f"CRE {fid} {ac['actype']} {_fmt(ac['lat_deg'])} {_fmt(ac['lon_deg'])} "
                       f"{_fmt(ac['hdg_deg'] % 360.0)} {_fmt(ac['alt_ft'])} {_fmt(ac['cas_kt'])}")
            if bs.traf.id2idx(fid) < 0:
                raise SimulatorError(f"CRE {fid}: BlueSky did not create the aircraft")
            route = ac.get("route") or ()
            for name, lat, lon, alt_ft in route:
                idx = bs.traf.id2idx(fid)
                rte = bs.traf.ap.route[idx]
                alt = "" if alt_ft is None else f" {_fmt(alt_ft)}"
                self._line(f"ADDWPT {fid} {_fmt(lat)} {_fmt(lon)}{alt}")
                # BlueSky names lat/lon waypoints after the aircraft; give it the route's name so
                # that DIRECT <name> works. It is appended last (no ORIG/DEST in these routes).
                i = rte.nwp - 1
                if i < 0 or abs(rte.wplat[i] - lat) > 1e-6 or abs(rte.wplon[i] - lon) > 1e-6:
                    raise SimulatorError(f"ADDWPT {fid} {name}: waypoint not added where expected")
                rte.wpname[i] = name.upper()
                if alt_ft is not None and abs(rte.wpalt[i] - alt_ft * ft) > 1e-3:
                    raise SimulatorError(f"ADDWPT {fid} {name}: altitude constraint not set")
            if route:
                self._line(f"LNAV {fid} ON")
                self._line(f"VNAV {fid} ON")
        return bs.traf.ntraf

    def op_delete(self, flight_id: str) -> int:
        bs = self.bs
        if bs.traf.id2idx(flight_id) < 0:
            raise SimulatorError(f"DEL {flight_id}: Aircraft with callsign {flight_id.upper()} not found; "
                                 f"known: {list(bs.traf.id)}")
        self._line(f"DEL {flight_id}")
        if bs.traf.id2idx(flight_id) >= 0:
            raise SimulatorError(f"DEL {flight_id}: the aircraft is still there")
        return bs.traf.ntraf

    def op_step(self, n: int) -> float:
        bs = self.bs
        if bs.sim.state != bs.OP:
            bs.sim.op()          # without traffic BlueSky would stay in INIT and not advance time
        self.replies.clear()
        for _ in range(int(n)):
            bs.sim.step()
        # Commands queued inside BlueSky (scenario lines, follow-ups such as RSZONEDH) run during
        # the step: their error replies must not vanish either.
        errors = [text.strip() for flags, text in self.replies if flags != bs.BS_OK]
        self.replies.clear()
        if errors:
            raise SimulatorError(f"BlueSky rejected a queued command during step (simt={bs.sim.simt}): "
                                 + " | ".join(errors))
        return float(bs.sim.simt)

    # ------------------------------------------------------------------ reading state
    def op_states(self) -> dict:
        import numpy as np
        t = self.bs.traf
        return {
            "simt": float(self.bs.sim.simt),
            "scenario": self.bs.stack.get_scenname(),
            "id": list(t.id),
            "lat": np.array(t.lat, dtype=float), "lon": np.array(t.lon, dtype=float),
            "alt": np.array(t.alt, dtype=float), "gs": np.array(t.gs, dtype=float),
            "trk": np.array(t.trk, dtype=float), "vs": np.array(t.vs, dtype=float),
            "selalt": np.array(t.selalt, dtype=float),
            "hdg": np.array(t.hdg, dtype=float), "tas": np.array(t.tas, dtype=float),
            "cas": np.array(t.cas, dtype=float),
        }

    def op_conflicts(self) -> dict:
        cd, ids = self.bs.traf.cd, self.bs.traf.id
        alt = dict(zip(ids, self.bs.traf.alt))
        rows: dict[tuple[str, str], dict] = {}
        for k, (a, b) in enumerate(cd.confpairs):
            key = (a, b) if a < b else (b, a)
            if key not in rows:
                rows[key] = {"tcpa": float(cd.tcpa[k]), "dcpa": float(cd.dcpa[k]),
                             "dist": float(cd.dist[k]), "tlos": float(cd.tLOS[k]),
                             "qdr": float(cd.qdr[k]) if a == key[0] else (float(cd.qdr[k]) + 180.0) % 360.0,
                             "conflict": True}
        los = {tuple(sorted(p)) for p in cd.lospairs}
        for key in los - set(rows):
            rows[key] = {"tcpa": math.nan, "dcpa": math.nan, "dist": math.nan, "tlos": 0.0,
                         "qdr": math.nan, "conflict": False}
        out = []
        for (a, b), r in sorted(rows.items()):
            out.append({"id1": a, "id2": b, "los": (a, b) in los,
                        "dalt": float(alt[a] - alt[b]), **r})
        return {"simt": float(self.bs.sim.simt), "rows": out}

    def op_resolution_active(self) -> dict[str, bool]:
        t = self.bs.traf
        return {fid: bool(a) for fid, a in zip(t.id, t.cr.active)}

    # ------------------------------------------------------------------ clearances
    @staticmethod
    def _text(value) -> str:
        """The value as the user gave it, for a probe command that only has to fail."""
        try:
            return _fmt(value)
        except (TypeError, ValueError):
            return str(value)

    def _idx(self, flight_id: str, probe: str) -> int:
        idx = self.bs.traf.id2idx(flight_id)
        if idx < 0:
            self._line(probe)   # BlueSky rejects it with its own message ("... not found")
            raise SimulatorError(f"{probe}: aircraft {flight_id!r} not found; known: {list(self.bs.traf.id)}")
        return idx

    def op_clear(self, flight_id: str, action_type: str, value, waypoint, relative: bool) -> dict:
        if action_type not in _COMMAND_TYPES:
            raise SimulatorError(f"unknown action_type {action_type!r}; expected one of {_COMMAND_TYPES}")
        out = getattr(self, f"_clear_{action_type}")(flight_id, value, waypoint, relative)
        out["simt"] = float(self.bs.sim.simt)
        return out

    @staticmethod
    def _number(value, what: str):
        """The value as a finite float, or the raw text (BlueSky syntax, e.g. FL300) when not numeric."""
        if value is None:
            raise SimulatorError(f"{what} clearance needs a value")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return value.strip()
        value = float(value)
        if not math.isfinite(value):
            raise SimulatorError(f"{what} clearance value must be a finite number, got {value!r}")
        return value

    def _absolute(self, cmd, fid, value, relative, current, what):
        v = self._number(value, what)
        if isinstance(v, str):
            if relative:
                raise SimulatorError(f"relative {what} clearance needs a number, got {value!r}")
            self._idx(fid, f"{cmd} {fid} {v}")
            self._line(f"{cmd} {fid} {v}")     # BlueSky parses (and rejects) its own syntax
            return None
        return current + v if relative else v

    def _clear_heading(self, fid, value, waypoint, relative):
        bs = self.bs
        idx = self._idx(fid, f"HDG {fid} {self._text(value)}")
        cur = float(bs.traf.hdg[idx])
        target = self._absolute("HDG", fid, value, relative, cur, "heading")
        if target is not None:
            target %= 360.0
            self._line(f"HDG {fid} {_fmt(target)}")
        else:
            target = float(bs.traf.ap.trk[idx]) % 360.0
        if bs.traf.swlnav[idx] or (bs.traf.wind.winddim == 0
                                   and abs(_wrap180(float(bs.traf.ap.trk[idx]) - target)) > 1e-4):
            raise SimulatorError(f"HDG {fid}: command not applied (autopilot track {bs.traf.ap.trk[idx]})")
        return {"value": _wrap180(target - cur), "target_value": target, "unit": "deg"}

    def _clear_altitude(self, fid, value, waypoint, relative):
        bs, ft = self.bs, self.aero.ft
        idx = self._idx(fid, f"ALT {fid} {self._text(value)}")
        cur = float(bs.traf.alt[idx]) / ft
        target = self._absolute("ALT", fid, value, relative, cur, "altitude")
        if target is not None:
            if not -2000.0 <= target <= 60000.0:
                raise SimulatorError(f"ALT {fid}: target {target:.0f} ft outside -2000..60000 ft")
            self._line(f"ALT {fid} {_fmt(target)}")
            if abs(float(bs.traf.selalt[idx]) - target * ft) > 1e-3:
                raise SimulatorError(f"ALT {fid}: command not applied (selected {bs.traf.selalt[idx] / ft:.1f} ft)")
        target = float(bs.traf.selalt[idx]) / ft
        return {"value": target - cur, "target_value": target, "unit": "ft"}

    def _clear_speed(self, fid, value, waypoint, relative):
        bs, kts = self.bs, self.aero.kts
        idx = self._idx(fid, f"SPD {fid} {self._text(value)}")
        cur = float(bs.traf.cas[idx]) / kts
        target = self._absolute("SPD", fid, value, relative, cur, "speed")
        if target is not None:
            if not 2.0 < target < 1000.0:   # BlueSky reads values below 1 as Mach
                raise SimulatorError(f"SPD {fid}: target {target:.1f} kt CAS outside 2..1000 kt")
            self._line(f"SPD {fid} {_fmt(target)}")
            if abs(float(bs.traf.selspd[idx]) - target * kts) > 1e-3:
                raise SimulatorError(f"SPD {fid}: command not applied (selected {bs.traf.selspd[idx]})")
        sel = float(bs.traf.selspd[idx])
        target = (self.aero.mach2cas(sel, float(bs.traf.alt[idx])) if sel < 2.0 else sel) / kts
        return {"value": target - cur, "target_value": target, "unit": "kt"}

    def _clear_direct_to(self, fid, value, waypoint, relative):
        from atc_il.geometry import bearing_deg
        bs = self.bs
        if not waypoint:
            raise SimulatorError("direct_to clearance needs waypoint=<name of a waypoint in the route>")
        idx = self._idx(fid, f"DIRECT {fid} {waypoint}")
        self._line(f"DIRECT {fid} {waypoint}")
        rte = bs.traf.ap.route[idx]
        name = str(waypoint).upper()
        if not bs.traf.swlnav[idx] or rte.iactwp < 0 or rte.wpname[rte.iactwp] != name:
            raise SimulatorError(f"DIRECT {fid} {waypoint}: command not applied")
        brg = float(bearing_deg(bs.traf.lat[idx], bs.traf.lon[idx], rte.wplat[rte.iactwp], rte.wplon[rte.iactwp]))
        return {"value": _wrap180(brg - float(bs.traf.trk[idx])), "target_value": brg, "unit": "deg",
                "waypoint": name}

    def _clear_resume(self, fid, value, waypoint, relative):
        bs = self.bs
        idx = self._idx(fid, f"LNAV {fid} ON")
        self._line(f"LNAV {fid} ON")
        self._line(f"VNAV {fid} ON")
        if not (bs.traf.swlnav[idx] and bs.traf.swvnav[idx]):
            raise SimulatorError(f"resume {fid}: LNAV/VNAV not engaged")
        return {"value": 0.0, "target_value": None, "unit": ""}


def _redirect_output(log_path: Path) -> None:
    """BlueSky prints (and prints tracebacks of rejected commands): keep them in a log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def worker_main(conn, workdir: str, cache_dir: str | None, dt_s: float, log_path: str) -> None:
    """Process entry point: initialise BlueSky, then serve requests until ``close`` or EOF."""
    _redirect_output(Path(log_path))
    try:
        engine = _Engine(Path(workdir), Path(cache_dir) if cache_dir else None, dt_s)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        conn.send(("err", f"BlueSky failed to start: {type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    conn.send(("ok", {"pid": os.getpid(), "init_s": engine.init_s}))
    while True:
        try:
            name, args, kwargs = conn.recv()
        except (EOFError, OSError):
            break
        if name == "close":
            conn.send(("ok", None))
            break
        try:
            op = getattr(engine, f"op_{name}", None)
            if op is None:
                raise SimulatorError(f"unknown request {name!r}")
            conn.send(("ok", op(*args, **kwargs)))
        except SimulatorError as exc:
            conn.send(("err", str(exc), None))
        except Exception as exc:  # noqa: BLE001
            conn.send(("err", f"{type(exc).__name__} in BlueSky during {name}: {exc}", traceback.format_exc()))
