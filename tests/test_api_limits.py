"""Bounded work per request: the worst valid /v1/detect (200 aircraft x 36 points converging at one level,
every pair in conflict) is refused in bounded time and memory with a 422 naming the limit, the largest accepted
picture is answered, and liveness and readiness answer while a worker prepares a large picture."""

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from api.app import create_app
from tests.helpers import served

KEY = "limits-key-0123456789abcdef"
H = {"X-API-Key": KEY}


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def converging(n: int, points: int = 36) -> list[dict]:
    """n aircraft on a circle flying at FL350 towards its centre: every pair in conflict."""
    t0 = pd.Timestamp("2024-06-03T10:00:00Z")
    out = []
    for i in range(n):
        ang = 2 * np.pi * i / n
        pts = []
        for k in range(points):
            r = 30 - k * 5 * 450 / 3600
            pts.append({"time": (t0 + pd.Timedelta(seconds=5 * k)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "lat_deg": 50 + r / 60 * np.cos(ang), "lon_deg": 4 + r / 60 * np.sin(ang) / np.cos(np.radians(50)),
                        "alt_ft": 35000.0, "gs_kt": 450.0, "trk_deg": float((np.degrees(ang) + 180) % 360), "vs_fpm": 0.0})
        out.append({"flight_id": f"AC{i:03d}", "points": pts})
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from atc_il.config import DatasetConfig
    from pipelines.features import feature_spec
    from pipelines.shards import spec_hash
    from tests.helpers import untrained_policy
    dcfg = DatasetConfig()
    feats = {k: np.random.default_rng(0).normal(size=(8, *t["shape"]))
             for k, t in feature_spec(dcfg, 5.0)["tensors"].items()}
    pol = untrained_policy(dcfg, feats, 5.0)
    pol.spec["spec_hash"] = spec_hash(pol.spec)
    path = tmp_path_factory.mktemp("limits") / "policy"
    pol.save(path)
    app = create_app(str(path), api_keys=[KEY], runtime="torch")
    with served(app) as url:
        yield url


def test_worst_valid_detect_is_refused_in_bounded_time_and_memory_while_health_answers(server):
    body = {"aircraft": converging(200), "n_alternatives": 64}
    with httpx.Client(base_url=server, timeout=60) as c:
        c.post("/v1/detect", json={"aircraft": converging(4)}, headers=H).raise_for_status()   # warm
        rss0 = _rss_mb()
        result, health = {}, []

        def send():
            t = time.perf_counter()
            result["r"] = c.post("/v1/detect", json=body, headers=H)
            result["s"] = time.perf_counter() - t

        th = threading.Thread(target=send)
        th.start()
        with httpx.Client(base_url=server, timeout=10) as h:
            while th.is_alive():
                t = time.perf_counter()
                ok = h.get("/v1/health/live").status_code == h.get("/v1/health/ready", headers=H).status_code == 200
                health.append((ok, time.perf_counter() - t))
                time.sleep(0.05)
        th.join()
        r = result["r"]
        assert r.status_code == 422 and r.json()["error"] == "limit_exceeded", r.text[:500]
        assert "max_conflicts" in r.json()["message"] and "19,900 conflicts" in r.json()["message"]
        assert result["s"] < 10, result["s"]
        assert health and all(ok for ok, _ in health) and max(s for _, s in health) < 2.0, health
        assert _rss_mb() - rss0 < 400, (rss0, _rss_mb())


def test_the_largest_accepted_picture_is_answered_and_alternatives_shrink_the_limit(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        t = time.perf_counter()
        r = c.post("/v1/detect", json={"aircraft": converging(22), "n_alternatives": 16}, headers=H)   # 231 pairs
        assert r.status_code == 200 and len(r.json()["conflicts"]) == 231, r.text[:300]
        assert time.perf_counter() - t < 10
        r = c.post("/v1/detect", json={"aircraft": converging(22), "n_alternatives": 64}, headers=H)
        assert r.status_code == 422 and "max_conflicts=64 with n_alternatives=64" in r.json()["message"]
        assert c.get("/v1/model", headers=H).json()["limits"]["max_conflicts"] == 256
