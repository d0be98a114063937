"""The atc-il REST service: validate, call the one prediction function, format.

``create_app(model_uri, api_keys=[...])`` builds the FastAPI app; the model is loaded once at start (lifespan).
Each worker process predicts in its event loop (one core's worth of CPU-bound work; a thread pool only added GIL
hand-offs): a request's features are prepared by its handler and the forward passes go through a micro-batcher
(:mod:`api.batching`): the requests ready in the same turn of the loop share one. Every endpoint but
``/v1/health/live`` wants a key in ``X-API-Key``. Client mistakes are 4xx naming the field; anything else is a
generic 500 logged server-side (no traceback in a response).
"""

import gc
import json
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Optional

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from api import schemas as S
from api.batching import MicroBatcher
from api.metrics import Metrics, MetricsMiddleware
from api.security import KEY_HEADER, ApiKeyMiddleware, BodyLimitMiddleware, check_keys, error_response
from api.service import ItemError, ModelService
from atc_il.errors import AtcIlError, DataError, LimitError, ModelError

log = logging.getLogger("atc_il.api")
ERRORS = {s: {"model": S.ErrorOut} for s in (400, 401, 413, 422, 500, 503)}
SERVE_ENV = "ATC_IL_SERVE"   # JSON configuration handed to uvicorn workers by `atc-il serve`


class RequestProblem(Exception):
    def __init__(self, detail: list[dict]):
        self.detail = detail


def _loc(loc) -> str:
    return ".".join(str(p) for p in loc)


def _items(errors) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]


def _validation_response(detail: list[dict], error="validation_error") -> JSONResponse:
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return error_response(422, error, f"{_loc(first['loc'])}: {first['msg']}{more}", detail)


@dataclass
class ServiceState:
    """What the routes depend on (``Depends(state)``): the loaded model, metrics, batcher and limits."""
    model_uri: str
    service: ModelService
    metrics: Metrics
    batcher: MicroBatcher
    limits: dict
    startup_error: Optional[Exception] = None

    async def infer(self, endpoint: str, prepare, *args, in_thread: bool = False) -> tuple[list, list]:
        """Prepare each request's features (``in_thread``: in a worker thread, so that the event loop keeps
        answering health checks while a large picture is prepared), then answer them through the micro-batcher."""
        if not self.service.ready:
            raise StarletteHTTPException(503, "the model is not loaded yet")
        with self.metrics.inference.labels(endpoint).time():
            if in_thread:
                items = [await anyio.to_thread.run_sync(prepare, *a) for a in args]
            else:
                items = [prepare(*a) for a in args]
            return items, await self.batcher.submit(items)


def state(request: Request) -> ServiceState:
    return request.app.state.atc


def ready_service(st: ServiceState = Depends(state)) -> ModelService:
    if not st.service.ready:
        raise StarletteHTTPException(503, "the model is not loaded yet")
    return st.service


def _release_memory() -> None:
    """After a large request: collect, and hand freed heap pages back to the OS (glibc), so that one large
    picture does not leave the worker holding gigabytes."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def health_router(documented_key) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/health/live", response_model=S.Health, tags=["health"])
    async def live():
        """Liveness (no key needed): the process answers."""
        return {"status": "alive"}

    @router.get("/v1/health/ready", response_model=S.Health, responses=ERRORS, tags=["health"],
                dependencies=[documented_key])
    async def ready(st: ServiceState = Depends(state)):
        """Readiness: 200 once the model is loaded, 503 before."""
        if not st.service.ready:
            return JSONResponse({"status": "loading", "detail": "the model is not loaded yet"}, status_code=503)
        return {"status": "ready"}

    @router.get("/v1/model", response_model=S.ModelInfo, responses=ERRORS, tags=["model"],
                dependencies=[documented_key])
    async def model(st: ServiceState = Depends(state), service: ModelService = Depends(ready_service)):
        """The served model: URI, name, version when known, feature spec hash, history steps, and where its
        context network runs (``onnxruntime`` or ``torch``)."""
        i = service.info
        return {**{k: i[k] for k in ("uri", "name", "version", "spec_hash", "history_steps", "step_s",
                                     "exact_log_prob", "runtime", "loaded_at")}, "limits": st.limits}

    @router.get("/metrics", tags=["metrics"], dependencies=[documented_key],
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **ERRORS})
    async def prometheus(st: ServiceState = Depends(state)):
        """Prometheus metrics: requests, latency histogram, errors by status, inference time."""
        body, ctype = st.metrics.render()
        return Response(body, media_type=ctype)

    return router


def predict_router(documented_key, ConflictRequest, BatchRequest, DetectRequest) -> APIRouter:
    """The prediction routes for this service's request models (their limits are per service)."""
    router = APIRouter(tags=["predict"], dependencies=[documented_key], responses=ERRORS)

    @router.post("/v1/predict", response_model=S.PredictResponse)
    async def predict(req: ConflictRequest, st: ServiceState = Depends(state)):
        """The most likely decision for one conflict (the two aircraft's recent track points, optional
        neighbours, flight plans and recent clearances), with sampled alternatives grouped into modes."""
        problems = S.cross_checks(req.aircraft, req.neighbours)
        if problems:
            raise RequestProblem(problems)
        (item,), (result,) = await st.infer("predict", st.service.prepare_conflict, (req,))
        (res,) = st.service.conflicts_out(item, result)
        st.metrics.predicted.labels("predict").inc()
        return {**res, "model": st.service.ref()}

    @router.post("/v1/predict/batch", response_model=S.BatchResponse)
    async def predict_batch(req: BatchRequest, st: ServiceState = Depends(state)):
        """A decision for each of a list of conflicts (at most the service's batch size)."""
        problems = [p for i, c in enumerate(req.conflicts)
                    for p in S.cross_checks(c.aircraft, c.neighbours, ("body", "conflicts", i))]
        if problems:
            raise RequestProblem(problems)
        items, results = await st.infer("batch", st.service.prepare_conflict,
                                        *((c, i) for i, c in enumerate(req.conflicts)))
        res = [st.service.conflicts_out(it, r)[0] for it, r in zip(items, results)]
        st.metrics.predicted.labels("batch").inc(len(res))
        return {"model": st.service.ref(), "results": res}

    @router.post("/v1/detect", response_model=S.DetectResponse)
    async def detect(req: DetectRequest, st: ServiceState = Depends(state)):
        """The conflicts in a radar picture at the decision time, and a predicted decision for each (at most
        ``max_conflicts``, fewer with alternatives: see ``/v1/model``'s limits; more is a 422 naming the limit)."""
        problems = S.cross_checks(req.aircraft)
        if problems:
            raise RequestProblem(problems)
        big = sum(len(a.points) for a in req.aircraft) > 2000
        try:
            (item,), (result,) = await st.infer("detect", st.service.prepare_detect, (req,), in_thread=big)
            res = st.service.detect_out(req, item, result)
        finally:
            if big:
                _release_memory()
        st.metrics.predicted.labels("detect").inc(len(res["conflicts"]))
        return {**res, "model": st.service.ref()}

    return router


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_response(_items(exc.errors()))

    @app.exception_handler(RequestProblem)
    async def _problem(request: Request, exc: RequestProblem):
        return _validation_response(exc.detail)

    @app.exception_handler(DataError)
    async def _data_error(request: Request, exc: DataError):
        if isinstance(exc, LimitError):
            return error_response(422, "limit_exceeded", str(exc),
                                  [{"loc": ["body"], "msg": str(exc), "type": f"limit.{exc.limit}"}])
        loc = ["body", "conflicts", exc.index] if isinstance(exc, ItemError) else ["body"]
        return error_response(422, "data_error", str(exc), [{"loc": loc, "msg": str(exc), "type": "data_error"}])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        names = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                 503: "not_ready"}
        return error_response(exc.status_code, names.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; the cause is in the server log")


def _lifespan(st: ServiceState):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await anyio.to_thread.run_sync(st.service.load)
        except AtcIlError as exc:   # one clear line; raised here so that the logged traceback stays short
            log.error("refusing to serve %s: %s", st.model_uri, exc)
            app.state.startup_error = exc
            raise ModelError(f"refusing to serve {st.model_uri}: {exc}") from None
        # the ~200k objects of torch, pandas and the model live as long as the worker: out of the collector's
        # way, or each full collection under load pauses the worker for ~90 ms (measured)
        gc.collect()
        gc.freeze()
        st.metrics.ready.set(1)
        yield
        st.metrics.ready.set(0)
        gc.unfreeze()
    return lifespan


def create_app(model_uri: str, *, api_keys, max_body_bytes: int = 2 * 2**20, max_batch: int = 64,
               n_alternatives_max: int = 64, max_aircraft: int = 200, max_conflicts: int = 256,
               max_alternative_samples: int = 4096, expect_spec_hash: Optional[str] = None,
               torch_threads: Optional[int] = None, runtime: str = "auto") -> FastAPI:
    """The service for ``model_uri`` (``models:/NAME@alias``, ``runs:/ID/model`` or a policy folder): the routes
    of :func:`health_router` and :func:`predict_router` over a :class:`ServiceState`.

    Work per request is bounded: ``max_body_bytes`` (413), ``max_batch``, ``max_aircraft`` and
    ``n_alternatives_max`` (422 naming the field), and the conflicts one request may create, ``max_conflicts``,
    or ``max_alternative_samples // n_alternatives`` when it asks for alternatives (422 naming the limit)."""
    keys = check_keys(api_keys)
    for name, v in (("max_body_bytes", max_body_bytes), ("max_batch", max_batch), ("max_aircraft", max_aircraft),
                    ("max_conflicts", max_conflicts), ("max_alternative_samples", max_alternative_samples)):
        if int(v) < 1:
            raise AtcIlError(f"{name} must be at least 1, got {v}")
    n_alternatives_max = max(0, min(int(n_alternatives_max), S.N_ALTERNATIVES_LIMIT))
    # one torch thread: a request's forward pass is too small to split (2 threads on 2 cores doubled the latency
    # of a single worker); the cores are used by running one worker per core
    service = ModelService(model_uri, expect_spec_hash, torch_threads or 1, runtime, max_conflicts,
                           max_alternative_samples)
    metrics = Metrics()
    st = ServiceState(model_uri, service, metrics,
                      MicroBatcher(service.infer, max_items=max(64, max_batch), on_batch=metrics.batch_size.observe),
                      {"max_body_bytes": max_body_bytes, "max_batch": max_batch, "max_aircraft": max_aircraft,
                       "n_alternatives_max": n_alternatives_max, "max_conflicts": max_conflicts,
                       "max_alternative_samples": max_alternative_samples, "points_per_aircraft": S.POINTS_MAX,
                       "span_s": S.SPAN_MAX_S})
    ConflictRequest = S.conflict_request_model(n_alternatives_max)

    app = FastAPI(title="atc-il", version="1", lifespan=_lifespan(st), openapi_url=None, docs_url=None,
                  redoc_url=None,
                  description="Predicts how an air traffic controller resolves a conflict between two aircraft "
                              "(imitation of recorded decisions). Units are in field names; times are ISO-8601 UTC.")
    app.state.atc = st
    app.state.service, app.state.metrics, app.state.startup_error = service, metrics, None
    documented_key = Security(APIKeyHeader(name=KEY_HEADER, auto_error=False,
                                           description="one of the service's API keys"))
    add_error_handlers(app)
    app.include_router(health_router(documented_key))
    app.include_router(predict_router(documented_key, ConflictRequest,
                                      S.batch_request_model(ConflictRequest, max_batch),
                                      S.detect_request_model(n_alternatives_max, max_aircraft)))

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi():
        return JSONResponse(app.openapi())

    # outermost last: metrics see every answer, auth comes before reading the body
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app


def tcp_listener(host: str, port: int):
    """The listening socket for ``atc-il serve --workers N``, bound with IPPROTO_TCP.

    uvicorn's own listener for several workers leaves ``proto`` 0, so asyncio never sets TCP_NODELAY on the
    accepted connections and every keep-alive request after the first waits ~40 ms for the client's delayed
    ACK (Kludex/uvicorn#3149)."""
    import socket
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AtcIlError(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def create_app_from_env() -> FastAPI:
    """uvicorn factory for ``atc-il serve --workers N``: configuration from ``ATC_IL_SERVE`` (JSON), keys from
    its key file and/or ``ATC_IL_API_KEYS`` (never in the JSON)."""
    from api.security import load_api_keys
    cfg = json.loads(os.environ[SERVE_ENV])
    keys = load_api_keys(cfg.pop("api_key_file", None))
    return create_app(cfg.pop("model_uri"), api_keys=keys, **cfg)
