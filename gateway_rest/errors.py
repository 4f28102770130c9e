"""The one mapping from the core's error tree to HTTP statuses and bodies."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from discovery.core.errors import (
    AuthError,
    DiscoveryError,
    InstanceNotFound,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    ShuttingDown,
    StoreUnavailable,
)


def error_response(exc: DiscoveryError) -> JSONResponse:
    """The HTTP answer for a core error."""
    if isinstance(exc, AuthError):
        return JSONResponse(
            {"detail": exc.message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
    if isinstance(exc, InvalidArgument):
        detail = [{"type": "value_error", "loc": ["body", exc.field], "msg": exc.reason}]
        return JSONResponse({"detail": detail}, status_code=422)
    if isinstance(exc, InstanceNotFound):
        # The legacy API names every unknown instance this way.
        return JSONResponse({"detail": "Service not found"}, status_code=404)
    if isinstance(exc, NotFound):
        return JSONResponse({"detail": exc.message}, status_code=404)
    if isinstance(exc, LimitExceeded):
        return JSONResponse({"detail": exc.message}, status_code=429)
    if isinstance(exc, ShuttingDown | StoreUnavailable):
        return JSONResponse({"detail": exc.message}, status_code=503)
    return JSONResponse({"detail": exc.message}, status_code=400)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DiscoveryError)
    return error_response(exc)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's usual 422, made safe for inputs JSON cannot carry (NaN, Infinity, a body that
    is not UTF-8)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": jsonable_encoder(_json_safe(exc.errors()))}, status_code=422)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def install(app: FastAPI) -> None:
    app.add_exception_handler(DiscoveryError, _handle)
    app.add_exception_handler(RequestValidationError, _invalid_request)
