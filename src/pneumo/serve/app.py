"""The HTTP service: FastAPI on uvicorn, one model per process.

``POST /v1/predict`` and ``POST /v1/explain`` take an image in the multipart field ``file``; ``GET /v1/model`` is
the model card; ``GET /healthz``; ``GET /`` the one web page; OpenAPI docs at ``/docs``. Research use only.
"""

from __future__ import annotations

import copy
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

import pneumo
from pneumo.data.decode import ImageDecodeError
from pneumo.inference import DISCLAIMER, Predictor
from pneumo.serve.guards import (
    MULTIPART_SLACK,
    ApiError,
    BodyLimitMiddleware,
    InferenceRunner,
    InFlightLimitMiddleware,
    check_limits,
    check_pixels,
    read_upload_within,
    retry_headers,
)

ENV_PREFIX = "PNEUMO_SERVE_"
# Chest radiographs are at most about 4,300 x 4,300 pixels (Kermany's originals: about 7 megapixels); decoding an image
# costs a few bytes a pixel, so the service refuses larger ones by default (pneumo predict keeps the decoder's 64 MP).
SERVE_MAX_PIXELS = 25_000_000
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "JPEG, PNG, DICOM"}},
                }
            }
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"example": {"error": "...", "detail": "..."}}}}
    for code, text in [
        (400, "empty body or file, malformed multipart"),
        (408, "the upload's body did not arrive in time"),
        (413, "upload or image too large"),
        (415, "not multipart/form-data"),
        (422, "missing file field, undecodable or unsupported image; with --refuse-ood, an out-of-distribution image"),
        (503, "busy or timed out"),
    ]
}


def _page() -> str:
    return (files("pneumo.serve") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(
    model_path: str | Path | Predictor,
    *,
    max_upload_mb: float = 20.0,
    max_pixels: int = SERVE_MAX_PIXELS,
    max_concurrency: int = 2,
    max_waiting: int = 32,
    timeout_s: float = 30.0,
    upload_timeout_s: float = 30.0,
    device: str = "cpu",
    refuse_ood: bool = False,
) -> FastAPI:
    """A FastAPI app serving one model (a run folder, an ``.onnx`` file or a ready :class:`Predictor`).

    ``device``: where a run folder's network runs (``cpu``, ``cuda``, ``cuda:N``, ``auto``); ONNX runs on the CPU.

    At most ``max_concurrency`` images are decoded and classified at once, and at most ``max_waiting`` more uploads
    wait for them; further uploads get 503 before their body is read, and an upload whose body has not arrived within
    ``upload_timeout_s`` gets 408 (its slot is freed). An image the out-of-distribution check flags is answered
    with ``in_distribution: false`` and a ``reason`` (200), or with 422 ``out_of_distribution`` when ``refuse_ood``.
    The predictor is ``app.state.predictor``; the
    inference pool ``app.state.runner``.
    """
    check_limits(
        max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_concurrency=max_concurrency, max_waiting=max_waiting
    )
    if isinstance(model_path, Predictor):  # a shallow copy: the service's pixel limit stays out of the caller's object
        predictor = copy.copy(model_path)
    else:
        predictor = Predictor.load(model_path, device=device)
    predictor.max_pixels = max_pixels
    runner = InferenceRunner(max_concurrency, timeout_s)
    card = predictor.model_card()
    page = _page()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        runner.shutdown()

    app = FastAPI(
        title="pneumo",
        version=pneumo.__version__,
        description=f"Pneumonia classification from pediatric chest X-rays. **{DISCLAIMER}**",
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.runner = runner
    max_bytes = int(max_upload_mb * 1024 * 1024)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes + MULTIPART_SLACK, limit_text=f"{max_upload_mb:g} MB")
    app.add_middleware(InFlightLimitMiddleware, max_requests=max_concurrency + max_waiting)  # outermost: runs first
    _add_error_handlers(app)

    def _prepare(data: bytes, name: str, keep_original: bool):  # in the pool: decoding can be as slow as the model
        check_pixels(data, name, max_pixels)
        try:
            return app.state.predictor.prepare(data, name, keep_original=keep_original)
        except ImageDecodeError as exc:
            raise ApiError(422, "invalid_image", str(exc)) from exc

    def _predict(data: bytes, name: str) -> dict[str, Any]:
        result = app.state.predictor.predict_prepared([_prepare(data, name, keep_original=False)])[0]
        if refuse_ood and result.in_distribution is False:
            raise ApiError(422, "out_of_distribution", f"{name}: {result.reason}")
        return {
            **result.to_dict(),
            "model_id": card["model_id"],
            "pneumo_version": pneumo.__version__,
            "disclaimer": DISCLAIMER,
        }

    def _explain(data: bytes, name: str) -> bytes:
        return app.state.predictor.explain_prepared(_prepare(data, name, keep_original=True)).overlay_png

    @app.post("/v1/predict", openapi_extra=UPLOAD_BODY, responses=ERRORS, summary="Classify one X-ray")
    async def predict(request: Request) -> dict[str, Any]:
        """Probabilities, label (validated operating point for binary tasks), threshold and OOD verdict."""
        data, name = await read_upload_within(request, upload_timeout_s)
        return await runner(_predict, data, name)

    @app.post(
        "/v1/explain",
        openapi_extra=UPLOAD_BODY,
        responses={**ERRORS, 200: {"content": {"image/png": {}}}, 501: {"description": "ONNX model"}},
        response_class=Response,
        summary="Grad-CAM overlay of one X-ray (PNG)",
    )
    async def explain(request: Request) -> Response:
        """PNG: the Grad-CAM heatmap of the predicted class over the image, at the image's own size (the longer side
        shrunk to 2,048 pixels when larger)."""
        if (reason := app.state.predictor.explain_unavailable) is not None:
            raise ApiError(501, "explain_unavailable", reason)
        data, name = await read_upload_within(request, upload_timeout_s)
        png = await runner(_explain, data, name)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/v1/model", summary="Model card")
    async def model() -> dict[str, Any]:
        return card

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "model_id": card["model_id"]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error", "detail"}`` JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=retry_headers(exc.status))

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(  # keeps Starlette's headers (the Allow of a 405)
            {"error": code, "detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": str(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal_error", "detail": type(exc).__name__}, status_code=500)


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers: settings from ``PNEUMO_SERVE_*`` variables."""
    env = os.environ
    return create_app(
        env[f"{ENV_PREFIX}MODEL"],
        max_upload_mb=float(env.get(f"{ENV_PREFIX}MAX_UPLOAD_MB", 20)),
        max_pixels=int(env.get(f"{ENV_PREFIX}MAX_PIXELS", SERVE_MAX_PIXELS)),
        max_concurrency=int(env.get(f"{ENV_PREFIX}MAX_CONCURRENCY", 2)),
        max_waiting=int(env.get(f"{ENV_PREFIX}MAX_WAITING", 32)),
        timeout_s=float(env.get(f"{ENV_PREFIX}TIMEOUT_S", 30)),
        upload_timeout_s=float(env.get(f"{ENV_PREFIX}UPLOAD_TIMEOUT_S", 30)),
        device=env.get(f"{ENV_PREFIX}DEVICE", "cpu"),
        refuse_ood=env.get(f"{ENV_PREFIX}REFUSE_OOD", "False") == "True",
    )
