"""API keys (from a file of one key per line or ``ATC_IL_API_KEYS``), compared in constant time, and the
request-body size limit. Both are pure ASGI middlewares, so that an unauthenticated or oversized request is
answered before its body is read or parsed."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from starlette.responses import JSONResponse

from atc_il.errors import ConfigError

KEY_HEADER = "X-API-Key"
KEYS_ENV = "ATC_IL_API_KEYS"
MIN_KEY_LENGTH = 16
PUBLIC_PATHS = frozenset({"/v1/health/live"})


def load_api_keys(key_file: str | Path | None = None, env: dict | None = None) -> list[str]:
    """Keys from ``key_file`` (one per line; blank lines and ``#`` comments ignored) and from the
    comma-separated ``ATC_IL_API_KEYS``. Raises :class:`ConfigError` when there is none."""
    env = os.environ if env is None else env
    keys: list[str] = []
    if key_file is not None:
        path = Path(key_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the API key file: {exc.strerror or exc}") from None
        keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    keys += [k.strip() for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
    return check_keys(keys)


def check_keys(keys: Iterable[str]) -> list[str]:
    keys = list(dict.fromkeys(str(k) for k in keys or ()))
    if not keys:
        raise ConfigError(f"no API key configured: give --api-key-file FILE (one key per line) or set {KEYS_ENV} "
                          "(comma-separated); the service refuses to start without one")
    short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise ConfigError(f"API keys must have at least {MIN_KEY_LENGTH} characters (key #{short[0] + 1} is shorter); "
                          "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    bad = [i for i, k in enumerate(keys) if not k.isascii() or not k.isprintable() or "," in k]
    if bad:
        raise ConfigError(f"API key #{bad[0] + 1} has non-printable, non-ASCII characters or a comma")
    return keys


def key_ok(given: str | bytes | None, keys: list[bytes]) -> bool:
    """Constant-time comparison against every configured key (no early exit)."""
    if not given:
        return False
    g = given if isinstance(given, bytes) else given.encode("utf-8", "surrogateescape")
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(g, k)
    return ok


def error_response(status: int, error: str, message: str, detail: list | None = None, headers=None) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, "detail": detail or []}, status_code=status,
                        headers=headers)


class ApiKeyMiddleware:
    """401 for every HTTP request without a valid ``X-API-Key`` header, except :data:`PUBLIC_PATHS`."""

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.header = KEY_HEADER.lower().encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        given = [v for k, v in scope["headers"] if k == self.header]
        if not given:
            resp = error_response(401, "unauthorized", f"missing API key: send it in the {KEY_HEADER} header")
        elif len(given) > 1 or not key_ok(given[0], self.keys):
            resp = error_response(401, "unauthorized", "invalid API key")
        else:
            return await self.app(scope, receive, send)
        await resp(scope, receive, send)


class BodyLimitMiddleware:
    """413 when a request body exceeds ``max_bytes`` (declared Content-Length or streamed), before parsing."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _too_large(self, size: str) -> JSONResponse:
        return error_response(413, "too_large", f"request body of {size} bytes exceeds the limit of "
                              f"{self.max_bytes} bytes; split the request (e.g. fewer conflicts per batch)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared:
            try:
                n = int(declared[0])
            except ValueError:
                return await error_response(400, "bad_request", "invalid Content-Length header")(scope, receive, send)
            if n > self.max_bytes:
                return await self._too_large(str(n))(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":   # client went away
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._too_large(f"more than {self.max_bytes}")(scope, receive, send)
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
