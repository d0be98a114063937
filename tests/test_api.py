"""The REST service, served for real by uvicorn on loopback and called over HTTP with httpx: auth, limits,
schema validation naming the field, readiness, metrics, a schemathesis fuzz run without any 5xx, and the
served prediction equal to the offline prediction function's."""

import copy
import json
import socket
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from api.app import create_app
from tests.helpers import served

KEY = "test-key-0123456789abcdef"
H = {"X-API-Key": KEY}
MAX_BATCH, MAX_BODY, N_ALT_MAX = 4, 400_000, 16
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def model_ws(tmp_path_factory):
    """A tiny policy trained one epoch on the embedded sample (the quickstart chain, no MLflow)."""
    from models.config import load_model_config
    from models.train import train
    from pipelines.sample import radar_chain
    ws = tmp_path_factory.mktemp("api")
    radar_chain(ws)
    root = Path(__file__).resolve().parents[1]
    train(load_model_config(root / "models/configs/tiny.yaml", train={"epochs": 1}), ws / "dataset", ws / "run",
          tracking_uri=False, progress=False)
    return ws


@pytest.fixture(scope="session")
def server(model_ws):
    """The real app under uvicorn on a free loopback port, in a background thread."""
    app = create_app(str(model_ws / "run" / "best"), api_keys=[KEY, "second-key-0123456789"], max_batch=MAX_BATCH,
                     max_body_bytes=MAX_BODY, n_alternatives_max=N_ALT_MAX)
    with served(app) as url:
        yield url


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def picture(model_ws):
    """A radar picture: every aircraft's last two minutes of grid points, 30 s into a conflict episode."""
    tracks = pd.read_parquet(model_ws / "tracks")
    ep = pd.read_parquet(model_ws / "episodes").sort_values("first_detection").iloc[0]
    at = ep.first_detection + pd.Timedelta(seconds=30)
    win = tracks[(tracks.time <= at) & (tracks.time > at - pd.Timedelta(seconds=120))]
    win = win[win.groupby("flight_id").time.transform("size") >= 2]
    return ep, win


def _aircraft(win: pd.DataFrame, fid: str) -> dict:
    d = win[win.flight_id == fid].sort_values("time")
    return {"flight_id": fid, "points": [
        {"time": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "lat_deg": r.lat_deg, "lon_deg": r.lon_deg, "alt_ft": r.alt_ft,
         "gs_kt": r.gs_kt, "trk_deg": r.trk_deg, "vs_fpm": r.vs_fpm} for t, r in zip(d.time, d.itertuples())]}


@pytest.fixture(scope="session")
def conflict(picture):
    ep, win = picture
    others = [f for f in win.flight_id.unique() if f not in (ep.flight_id_1, ep.flight_id_2)][:3]
    return {"aircraft": [_aircraft(win, ep.flight_id_1), _aircraft(win, ep.flight_id_2)],
            "neighbours": [_aircraft(win, f) for f in others],
            "clearances": [{"time": (ep.first_detection - pd.Timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "flight_id": others[0], "action_type": "heading", "value": 20.0, "unit": "deg"}]}


def _frames(body: dict):
    """The same request as canonical DataFrames, built independently of the service's code."""
    rows = [{"flight_id": a["flight_id"], **p}
            for a in body["aircraft"] + body.get("neighbours", []) for p in a["points"]]
    tracks = pd.DataFrame(rows).assign(time=lambda d: pd.to_datetime(d["time"], utc=True))
    cl = pd.DataFrame(body.get("clearances") or [])
    if len(cl):
        cl = cl.assign(time=pd.to_datetime(cl["time"], utc=True), source="clearance_log", confidence=1.0)
    return tracks, (cl if len(cl) else None)


# ------------------------------------------------------------------ health, auth
def test_liveness_needs_no_key_and_readiness_does(client):
    assert client.get("/v1/health/live").json()["status"] == "alive"
    assert client.get("/v1/health/ready").status_code == 401
    assert client.get("/v1/health/ready", headers=H).json()["status"] == "ready"


@pytest.mark.parametrize("path", ["/v1/health/ready", "/v1/model", "/metrics", "/openapi.json"])
def test_every_other_endpoint_wants_the_key(client, path):
    r = client.get(path)
    assert r.status_code == 401 and "X-API-Key" in r.json()["message"]
    assert client.get(path, headers={"X-API-Key": KEY[:-1] + "x"}).status_code == 401
    assert client.get(path, headers={"X-API-Key": "second-key-0123456789"}).status_code == 200


def test_predict_without_key_is_401_before_the_body_is_read(client, conflict):
    assert client.post("/v1/predict", json=conflict).status_code == 401
    assert client.post("/v1/predict", content=b"{not json", headers={"X-API-Key": "nope"}).status_code == 401


def test_model_info(client, model_ws):
    m = client.get("/v1/model", headers=H).json()
    assert m["uri"] == str(model_ws / "run" / "best") and m["name"] == "tiny" and m["history_steps"] == 24
    assert len(m["spec_hash"]) == 16 and m["limits"]["max_batch"] == MAX_BATCH
    assert m["runtime"] == "onnxruntime"      # the default (auto): checked against PyTorch at start


def test_runtime_onnx_refuses_to_start_without_it_and_auto_keeps_pytorch(model_ws, monkeypatch, caplog):
    import models.onnx_context as oc
    from api.service import ModelService
    from atc_il.errors import ConfigError, ModelError
    monkeypatch.setattr(oc, "onnx_context", lambda policy, examples: (None, "no exporter here"))
    with pytest.raises(ModelError, match="--runtime onnx: no exporter here"):
        ModelService(str(model_ws / "run" / "best"), runtime="onnx").load()
    auto = ModelService(str(model_ws / "run" / "best"), runtime="auto")
    with caplog.at_level("WARNING", logger="atc_il.api"):
        auto.load()
    assert auto.info["runtime"] == "torch" and "no exporter here" in caplog.text
    with pytest.raises(ConfigError, match="runtime"):
        ModelService("x", runtime="fast")


# ------------------------------------------------------------------ predictions
def test_served_prediction_equals_the_offline_prediction_function(client, conflict, model_ws):
    from models.serving import Predictor
    body = {**conflict, "n_alternatives": 12, "seed": 3}
    r = client.post("/v1/predict", json=body, headers=H)
    assert r.status_code == 200, r.text
    got = r.json()
    tracks, cl = _frames(body)
    ids = (body["aircraft"][0]["flight_id"], body["aircraft"][1]["flight_id"])
    samples, dec, alts = Predictor.from_uri(model_ws / "run" / "best").detect_and_predict(
        tracks, clearances=cl, n_alternatives=12, pairs=[ids], seed=3)
    d = dec.iloc[0]
    assert got["decision"]["act"] == bool(d.act) and got["decision"]["flight_id"] == d.flight_id
    assert got["decision"]["action_type"] == d.action_type and got["decision"]["unit"] == d.unit
    # float32 on ONNX Runtime vs PyTorch: equal to ~1e-7 relative (a value in ft rounds at ~1e-4 absolute)
    assert got["decision"]["value"] == pytest.approx(d.value, rel=1e-5, abs=1e-4)
    assert got["decision"]["p_act"] == pytest.approx(d.p_act, abs=1e-4)
    assert got["conflict"]["in_conflict"] and got["conflict"]["tcpa_s"] == pytest.approx(samples.iloc[0].tcpa_s)
    assert [(m["flight_id"], m["action_type"]) for m in got["alternatives"]] == \
        [(m["flight_id"], m["action_type"]) for m in alts[0]]
    assert [m["value"] for m in got["alternatives"]] == pytest.approx([m["value"] for m in alts[0]], rel=1e-5,
                                                                      abs=1e-4)
    assert sum(m["probability_given_act"] for m in got["alternatives"]) == pytest.approx(1.0)
    assert pd.Timestamp(got["time"]) == d.time and got["model"]["name"] == "tiny"


def _same_decision(a: dict, b: dict) -> bool:
    """Equal up to float rounding (a forward pass over a batch may round differently from one over 1 row)."""
    return {k: v for k, v in a.items() if k not in ("p_act", "value")} == \
        {k: v for k, v in b.items() if k not in ("p_act", "value")} and \
        a["p_act"] == pytest.approx(b["p_act"], abs=1e-5) and (a["value"] or 0) == pytest.approx(b["value"] or 0, abs=1e-3)


def test_batch_is_the_single_prediction_per_conflict(client, conflict, picture):
    ep, win = picture
    other = {**conflict, "n_alternatives": 6, "seed": 5,
             "aircraft": list(reversed(conflict["aircraft"])),                  # same pair, other order
             "at": (ep.first_detection + pd.Timedelta(seconds=20)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    singles = [client.post("/v1/predict", json=c, headers=H).json() for c in (conflict, other)]
    r = client.post("/v1/predict/batch", json={"conflicts": [conflict, other, conflict]}, headers=H)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 3 and singles[0]["time"] != singles[1]["time"]
    for got, want in zip(res, singles + singles[:1]):
        assert _same_decision(got["decision"], want["decision"]) and got["time"] == want["time"]
        assert [(m["action_type"], m["probability"]) for m in got["alternatives"]] == \
            [(m["action_type"], m["probability"]) for m in want["alternatives"]]


def test_concurrent_requests_answer_as_sequential_ones(client, server, conflict, picture):
    """Requests in flight together share forward passes (micro-batching); each answer is its own."""
    from concurrent.futures import ThreadPoolExecutor
    ep, _ = picture
    bodies = [{**conflict, "seed": k, "n_alternatives": 4,
               "at": (ep.first_detection + pd.Timedelta(seconds=5 * (k % 5))).strftime("%Y-%m-%dT%H:%M:%SZ")}
              for k in range(24)]
    want = [client.post("/v1/predict", json=b, headers=H).json() for b in bodies[:5]]
    with httpx.Client(base_url=server, timeout=30) as c2, ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda b: c2.post("/v1/predict", json=b, headers=H).json(), bodies))
    for k, g in enumerate(got):
        w = want[k % 5]
        assert g["time"] == w["time"] and _same_decision(g["decision"], w["decision"]), k
    text = client.get("/metrics", headers=H).text
    assert "atc_il_api_inference_batch_requests_count" in text


def test_micro_batcher_answers_the_requests_of_one_turn_together_and_skips_cancelled_ones():
    import asyncio

    from api.batching import MicroBatcher
    calls = []

    def fn(items):
        calls.append(list(items))
        if "boom" in items:
            raise ValueError("boom")
        return [x * 2 for x in items]

    async def main():
        b = MicroBatcher(fn, max_items=3)
        ready = [asyncio.create_task(b.submit([k])) for k in (1, 2, 3, 4)]
        gone = asyncio.create_task(b.submit([99]))
        await asyncio.sleep(0)                          # the five handlers run in this turn and queue theirs
        gone.cancel()
        out = [await t for t in ready]
        alone = await b.submit([5])                     # an idle service: straight through
        with pytest.raises(ValueError):
            await b.submit(["boom"])
        return out, alone

    out, alone = asyncio.run(main())
    assert out == [[2], [4], [6], [8]] and alone == [10]
    assert calls[:3] == [[1, 2, 3], [4], [5]]           # at most max_items per pass; the cancelled one skipped


def test_detect_finds_the_conflict_and_equals_the_offline_path(client, picture, model_ws):
    from models.serving import Predictor
    ep, win = picture
    body = {"aircraft": [_aircraft(win, f) for f in win.flight_id.unique()]}
    r = client.post("/v1/detect", json=body, headers=H)
    assert r.status_code == 200, r.text
    got = r.json()
    _, dec, _ = Predictor.from_uri(model_ws / "run" / "best").detect_and_predict(_frames(body)[0])
    pairs = [(c["conflict"]["flight_id_1"], c["conflict"]["flight_id_2"]) for c in got["conflicts"]]
    assert pairs == list(zip(dec.flight_id_1, dec.flight_id_2)) and (ep.flight_id_1, ep.flight_id_2) in pairs
    assert [c["decision"]["value"] for c in got["conflicts"]] == pytest.approx(list(dec.value), abs=1e-4)
    assert all(c["conflict"]["dist_nm"] > 0 and c["conflict"]["in_conflict"] for c in got["conflicts"])


def test_a_decision_time_without_positions_is_a_422_data_error(client, conflict):
    r = client.post("/v1/predict", json={**conflict, "at": "2024-06-03T09:59:00Z"}, headers=H)
    assert r.status_code == 422 and r.json()["error"] == "data_error" and "decision time" in r.json()["message"]
    r = client.post("/v1/predict/batch", json={"conflicts": [conflict, {**conflict, "at": "2024-06-03T09:59:00Z"}]},
                    headers=H)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "conflicts", 1]


# ------------------------------------------------------------------ validation
def _set(body, path, value):
    b = copy.deepcopy(body)
    *head, last = path
    node = b
    for k in head:
        node = node[k]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return b


P0 = ("aircraft", 0, "points", 0)
CASES = [
    (P0 + ("lat_deg",), KeyError, "body.aircraft.0.points.0.lat_deg", "missing"),
    (P0 + ("lat_deg",), "50.1", "body.aircraft.0.points.0.lat_deg", "float_type"),
    (P0 + ("lat_deg",), 91.0, "body.aircraft.0.points.0.lat_deg", "less_than_equal"),
    (P0 + ("lon_deg",), -180.5, "body.aircraft.0.points.0.lon_deg", "greater_than_equal"),
    (P0 + ("alt_ft",), 70000.0, "body.aircraft.0.points.0.alt_ft", "less_than_equal"),
    (P0 + ("gs_kt",), -5.0, "body.aircraft.0.points.0.gs_kt", "greater_than_equal"),
    (P0 + ("trk_deg",), 361.0, "body.aircraft.0.points.0.trk_deg", "less_than_equal"),
    (P0 + ("vs_fpm",), True, "body.aircraft.0.points.0.vs_fpm", "float_type"),
    (P0 + ("time",), "yesterday", "body.aircraft.0.points.0.time", "time_parsing"),
    (P0 + ("time",), "2024-06-03T08:00:00", "body.aircraft.0.points.0.time", "time_zone"),
    (P0 + ("time",), 1717400000, "body.aircraft.0.points.0.time", "time_type"),
    (P0 + ("altitude_m",), 1.0, "body.aircraft.0.points.0.altitude_m", "extra_forbidden"),
    (("aircraft", 0, "flight_id"), "bad id!", "body.aircraft.0.flight_id", "string_pattern_mismatch"),
    (("aircraft", 0, "points"), [], "body.aircraft.0.points", "too_short"),
    (("clearances", 0, "action_type"), "climb", "body.clearances.0.action_type", "literal_error"),
    (("clearances", 0, "value"), 400.0, "body.clearances.0.value", "out_of_range"),
    (("clearances", 0, "unit"), "ft", "body.clearances.0.unit", "unit"),
    (("n_alternatives",), N_ALT_MAX + 1, "body.n_alternatives", "less_than_equal"),
    (("n_alternatives",), -1, "body.n_alternatives", "greater_than_equal"),
    (("at",), "2024-13-01T00:00:00Z", "body.at", "time_parsing"),
]


@pytest.mark.parametrize("path,value,loc,kind", CASES, ids=[f"{c[2]}:{c[3]}" for c in CASES])
def test_bad_input_is_a_422_naming_the_field(client, conflict, path, value, loc, kind):
    r = client.post("/v1/predict", json=_set(conflict, path, value), headers=H)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "validation_error" and err["message"].startswith(loc)
    assert any(".".join(map(str, d["loc"])) == loc and d["type"] == kind for d in err["detail"]), err
    assert "{" not in err["message"] and "!r}" not in err["message"]          # a formatted message, not a template
    if kind == "unit":
        assert "heading is in 'deg', got 'ft'" in err["message"]


def test_cross_field_mistakes_are_422_naming_the_field(client, conflict):
    dup = _set(conflict, ("aircraft", 1, "flight_id"), conflict["aircraft"][0]["flight_id"])
    r = client.post("/v1/predict", json=dup, headers=H)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "aircraft", 1, "flight_id"]
    late = _set(conflict, ("aircraft", 1, "points", -1, "time"), "2024-06-03T12:00:00Z")
    assert client.post("/v1/predict", json=late, headers=H).json()["detail"][0]["loc"] == ["body", "aircraft"]
    back = _set(conflict, ("aircraft", 0, "points", 1, "time"), conflict["aircraft"][0]["points"][0]["time"])
    r = client.post("/v1/predict", json=back, headers=H)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "aircraft", 0, "points"]


@pytest.mark.parametrize("content", [b"{not json", b"[]", b"null", b'{"aircraft": 3}', b""])
def test_malformed_bodies_are_4xx(client, content):
    r = client.post("/v1/predict", content=content, headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["message"], r.text


# ------------------------------------------------------------------ limits
def test_too_many_conflicts_is_a_422(client, conflict):
    r = client.post("/v1/predict/batch", json={"conflicts": [conflict] * (MAX_BATCH + 1)}, headers=H)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "conflicts"]


def test_oversized_bodies_are_413_declared_or_streamed(client, conflict):
    big = json.dumps({**conflict, "pad": "x" * MAX_BODY}).encode()
    r = client.post("/v1/predict", content=big, headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunks():   # no Content-Length: counted while streaming
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]
    r = client.post("/v1/predict", content=chunks(), headers={**H, "Content-Type": "application/json"})
    assert r.status_code == 413


# ------------------------------------------------------------------ metrics
def test_metrics_count_requests_errors_and_latency(client, conflict):
    client.post("/v1/predict", json=conflict, headers=H)
    client.get("/v1/model")
    text = client.get("/metrics", headers=H).text
    assert 'atc_il_api_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'atc_il_api_errors_total{route="/v1/model",status="401"}' in text
    assert 'atc_il_api_request_duration_seconds_bucket{le="0.025",method="POST",route="/v1/predict"}' in text
    assert "atc_il_api_model_ready 1.0" in text and 'atc_il_api_inference_seconds_count{endpoint="predict"}' in text


# ------------------------------------------------------------------ fuzz
EXAMPLES = {"positive": 15, "negative": 25, "repaired": 30}   # per POST operation; 3 per GET


def _repair(body):
    """Keep the fuzzed positions and kinematics but put every track on a common 5 s clock ending at the same
    time (and other times just before it), with distinct flight ids, so that generated requests get past
    validation into the prediction function."""
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("conflicts"), list):
        return {**body, "conflicts": [_repair(c) for c in body["conflicts"]]}
    end = pd.Timestamp("2024-06-03T08:10:00Z")
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")   # noqa: E731
    n = 0
    for key in ("aircraft", "neighbours"):
        for ac in body.get(key) or []:
            if isinstance(ac, dict) and isinstance(ac.get("points"), list):
                ac["flight_id"] = f"FZ{n}"
                n += 1
                for j, p in enumerate(ac["points"]):
                    if isinstance(p, dict):
                        p["time"] = iso(end - pd.Timedelta(seconds=5 * (len(ac["points"]) - 1 - j)))
    for c in body.get("clearances") or []:
        if isinstance(c, dict):
            c["time"] = iso(end - pd.Timedelta(seconds=30))
    for fp in body.get("flight_plans") or []:
        for w in (fp.get("waypoints") or []) if isinstance(fp, dict) else []:
            if isinstance(w, dict):
                w.pop("time", None)
    body.pop("at", None)
    return body


def test_schemathesis_fuzz_finds_no_server_error(server):
    """Schema-driven fuzzing from the served OpenAPI document: positive and negative cases per operation,
    plus positive cases repaired onto a common clock (so that fuzzed positions reach the model)."""
    import collections

    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", headers=H)
    failures, seen = [], collections.Counter()
    for result in schema.get_all_operations():
        op = result.ok()
        modes = ["positive", "negative", "repaired"] if op.method == "post" else ["positive"]
        for mode in modes:   # nothing negative to generate for a GET without parameters
            gen = GenerationMode.NEGATIVE if mode == "negative" else GenerationMode.POSITIVE

            @given(case=op.as_strategy(generation_mode=gen))
            @settings(max_examples=EXAMPLES[mode] if op.method == "post" else 3, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck), derandomize=True)
            def run(case):
                if mode == "repaired":  # noqa: B023  (run() is called in the iteration)
                    case.body = _repair(case.body)
                r = case.call(base_url=server, headers=H, timeout=30)
                seen[(op.label, mode, r.status_code)] += 1  # noqa: B023  (run() is called in the iteration)
                if r.status_code >= 500:
                    failures.append((op.label, mode, r.status_code, r.text[:200], case.body))  # noqa: B023  (run() is called in the iteration)
            run()
    assert sum(seen.values()) > 150 and not failures, failures[:3]
    reached = sum(v for (label, mode, status), v in seen.items() if mode == "repaired" and status == 200)
    assert reached >= 20, seen   # the repaired cases do reach the prediction function


# ------------------------------------------------------------------ refusing to start
def test_refuses_to_start_without_a_key_or_with_a_foreign_model(model_ws, tmp_path, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from api.service import ModelService
    from atc_il.errors import ConfigError, ModelError
    from atc_il_cli.cli import app as cli
    best = model_ws / "run" / "best"
    with pytest.raises(ConfigError, match="no API key"):
        create_app(str(best), api_keys=[])
    monkeypatch.delenv("ATC_IL_API_KEYS", raising=False)
    res = CliRunner().invoke(cli, ["serve", "--model", str(best)])
    assert res.exit_code == 2 and "no API key" in res.output
    with pytest.raises(ModelError, match="expected 0000"):
        ModelService(str(best), expect_spec_hash="0000").load()
    bare = tmp_path / "bare"
    shutil.copytree(best, bare)
    (bare / "feature_spec.json").unlink()
    with pytest.raises(ModelError, match="feature_spec.json is missing"):
        ModelService(str(bare)).load()
    spec = json.loads((best / "feature_spec.json").read_text())
    spec["tensors"]["pair"]["features"][0]["unit"] = "km"
    (bare / "feature_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="altered"):
        ModelService(str(bare)).load()


def test_worker_factory_reads_its_configuration_from_the_environment(model_ws, tmp_path, monkeypatch):
    from api.app import SERVE_ENV, create_app_from_env
    keys = tmp_path / "keys"
    keys.write_text("# service keys\nfile-key-0123456789abc\n\n")
    monkeypatch.setenv("ATC_IL_API_KEYS", "env-key-0123456789abcd")
    monkeypatch.setenv(SERVE_ENV, json.dumps({"model_uri": str(model_ws / "run" / "best"), "max_batch": 7,
                                              "api_key_file": str(keys)}))
    app = create_app_from_env()
    mw = next(m for m in app.user_middleware if m.cls.__name__ == "ApiKeyMiddleware")
    assert sorted(mw.kwargs["keys"]) == ["env-key-0123456789abcd", "file-key-0123456789abc"]


def test_a_ready_worker_keeps_its_long_lived_objects_out_of_the_collector(client):
    """A full collection over torch's, pandas' and the model's objects paused a worker ~90 ms under load."""
    import gc
    assert client.get("/v1/health/ready", headers=H).status_code == 200
    assert gc.get_freeze_count() > 10_000       # the server runs in this process (a uvicorn thread)


def test_not_ready_until_the_model_is_loaded(model_ws, conflict):
    """Without the lifespan having run (the model not loaded): readiness and predictions are 503."""
    import anyio
    app = create_app(str(model_ws / "run" / "best"), api_keys=[KEY])

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return ((await c.get("/v1/health/ready", headers=H)).status_code,
                    (await c.post("/v1/predict", json=conflict, headers=H)).status_code,
                    (await c.get("/v1/health/live")).status_code)
    assert anyio.run(go) == (503, 503, 200)


def test_the_multi_worker_listener_gives_keep_alive_connections_tcp_nodelay():
    """uvicorn's --workers listener loses TCP_NODELAY (+40 ms per keep-alive request, Kludex/uvicorn#3149);
    ours keeps it: a connection accepted by asyncio on it has Nagle off."""
    import asyncio
    import socket as so

    from api.app import tcp_listener

    async def main():
        sock = tcp_listener("127.0.0.1", 0)
        seen = {}

        def on_conn(reader, writer):
            seen["nodelay"] = writer.get_extra_info("socket").getsockopt(so.IPPROTO_TCP, so.TCP_NODELAY)
            writer.close()
        server = await asyncio.start_server(on_conn, sock=sock)
        _, w = await asyncio.open_connection(*sock.getsockname()[:2])
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        w.close()
        server.close()
        return seen.get("nodelay")

    assert asyncio.run(main()) == 1


def test_serve_with_two_workers_answers_and_stops(model_ws, conflict, tmp_path):
    """`atc-il serve --workers 2` for real: our own listener, two uvicorn processes, one answer, a clean stop."""
    import os
    import signal
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ATC_IL_API_KEYS": KEY, "ATC_IL_PROGRESS": "0", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "atc_il_cli.cli", "serve", "--model", str(model_ws / "run" / "best"),
                             "--port", str(port), "--workers", "2", "--log-level", "warning"], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        t0 = time.time()
        while time.time() - t0 < 120:
            assert proc.poll() is None, "the service exited"
            try:
                if httpx.get(f"{url}/v1/health/ready", headers=H).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        with httpx.Client(base_url=url, headers=H, timeout=30) as c:
            for _ in range(4):
                r = c.post("/v1/predict", json=conflict)
                assert r.status_code == 200, r.text
            assert "atc_il_api_conflicts_predicted_total" in c.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_flight_plans_are_accepted_and_converted_to_the_contract(client, picture):
    from api.schemas import FlightPlan
    from api.service import flight_plans_frame
    _, win = picture
    fids = list(win.flight_id.unique())
    plans = [{"flight_id": fids[0], "waypoints": [{"seq": 0, "waypoint": "ENTRY", "lat_deg": 50.0, "lon_deg": 4.0},
                                                   {"seq": 1, "waypoint": "EXIT", "lat_deg": 51.0, "lon_deg": 6.0,
                                                    "alt_ft": 35000}]}]
    r = client.post("/v1/detect", json={"aircraft": [_aircraft(win, f) for f in fids], "flight_plans": plans},
                    headers=H)
    assert r.status_code == 200, r.text
    df = flight_plans_frame([FlightPlan(**p) for p in plans])
    assert df[["flight_id", "seq", "waypoint", "alt_ft"]].values.tolist()[1] == [fids[0], 1, "EXIT", 35000.0]
    assert df["alt_ft"].isna().tolist() == [True, False] and flight_plans_frame([]) is None


def test_a_clearance_names_the_conflict_it_resolves():
    """``against_flight_id`` reaches the features (dataset.pair_history reads it); without it the column is empty."""
    from api.schemas import Clearance
    from api.service import clearances_frame
    c = [Clearance(time="2024-01-01T10:00:00Z", flight_id="A", action_type="heading", value=20.0, against_flight_id="B"),
         Clearance(time="2024-01-01T10:00:05Z", flight_id="C", action_type="speed", value=-20.0)]
    df = clearances_frame(c)
    assert df["against_flight_id"].iloc[0] == "B" and pd.isna(df["against_flight_id"].iloc[1])
