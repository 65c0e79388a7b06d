"""The FastAPI application: thin routes that translate HTTP to the batcher and model, and back.

Routes and status codes follow docs/contracts.md. Every error, including FastAPI's own validation
errors and unknown paths, is reshaped into ``{"error": {"code", "message", "field", "limit"}}``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from inference import __version__
from inference.batcher import Batcher, BatchLimits
from inference.domain import ModelInfo, Prediction, PredictItem
from inference.errors import (
    BatcherClosedError,
    InputError,
    ModelFailure,
    NotReadyError,
    QueueFullError,
)
from inference.metrics import EXPOSITION_CONTENT_TYPE, ServerMetrics
from inference.middleware import BodyLimitMiddleware, MetricsMiddleware
from inference.observations import ItemFeatures, ObservationLog
from inference.runtime import ModelRuntime
from inference.schemas import (
    PREDICT_OPENAPI,
    check_page_limit,
    error_body,
    input_error_from_validation,
    parse_predict_request,
    predict_response,
)
from inference.settings import Settings
from inference.validation import InputLimits, check_request

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "1"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def create_app(settings: Settings) -> FastAPI:
    """Build the server app; the model loads in the background once the app starts."""
    metrics = ServerMetrics(settings.release)
    runtime = ModelRuntime(settings)
    batcher: Batcher[PredictItem, Prediction] = Batcher(
        runtime.predict_batch,
        limits=BatchLimits(
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            max_tokens=settings.max_tokens,
            length_buckets=settings.length_buckets,
        ),
        on_batch=metrics.observe_batch,
        length=lambda item: item.tokens,
    )
    metrics.track_queue_depth(lambda: batcher.depth)
    observations = ObservationLog(capacity=settings.observations)
    limits = InputLimits(max_chars=settings.max_chars, max_items=settings.max_items)
    started_at = time.time()

    def publish_model(info: ModelInfo) -> None:
        metrics.set_model(
            release=settings.release,
            model=info.name,
            sha256=info.weights_sha256,
            task=info.task,
            device=info.device,
            dtype=info.dtype,
            quantize=info.quantize,
        )

    def observe_load(outcome: str, seconds: float) -> None:
        metrics.observe_load(settings.release, outcome, seconds)

    metrics.start_release(settings.release)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        runtime.start_loading(publish_model, observe_load)
        yield
        runtime.stop()
        await batcher.stop()

    app = FastAPI(
        title="Warden inference server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _add_error_handlers(app, metrics)

    @app.post("/predict", openapi_extra=PREDICT_OPENAPI)
    async def predict(request: Request) -> JSONResponse:
        predictor = runtime.predictor()
        body = parse_predict_request(await request.body())
        check_request(body.inputs, body.top_k, limits)
        predictor.check_inputs(body.inputs)
        lengths = predictor.token_lengths(body.inputs)
        items = [
            PredictItem(text=text, top_k=body.top_k, tokens=tokens)
            for text, tokens in zip(body.inputs, lengths, strict=True)
        ]
        predictions = await batcher.run(items)
        _record(predictions, observations, metrics)
        info = predictor.info
        return JSONResponse(
            predict_response(
                task=info.task,
                release=settings.release,
                model=info.name,
                predictions=predictions,
            )
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if runtime.ready:
            return JSONResponse({"ready": True, "release": settings.release})
        body = {
            "ready": False,
            "reason": runtime.reason,
            "failed": runtime.failed,  # True: it will not become ready without a restart/fix
            "release": settings.release,
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS})

    @app.get("/version")
    async def version() -> dict[str, Any]:
        info = runtime.info
        return {
            "release": settings.release,
            "model": info.name if info else runtime.model_name,
            "model_path": str(info.path if info else runtime.model_path),
            "weights_sha256": info.weights_sha256 if info else None,
            "task": info.task if info else runtime.task,
            "device": info.device if info else None,
            "dtype": settings.dtype,
            "quantize": settings.quantize,
            "started_at": started_at,
            "started_at_iso": datetime.fromtimestamp(started_at, UTC).isoformat(),
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "max_tokens": settings.max_tokens,
            "length_buckets": list(settings.length_buckets),
            "server_version": __version__,
        }

    @app.get("/v1/observations")
    async def read_observations(after: int = -1, limit: int | None = None) -> dict[str, Any]:
        page = observations.read(after=after, limit=check_page_limit(limit, settings.observations))
        return {
            "next": page.next,
            "oldest": page.oldest,
            "dim": page.dim,
            "observations": [
                {
                    "seq": o.seq,
                    "at": o.at,
                    "features": list(o.features),
                    "confidence": o.confidence,
                    "label": o.label,
                }
                for o in page.observations
            ],
        }

    @app.get("/metrics", response_class=PlainTextResponse)  # documented as text, not JSON
    async def metrics_text() -> Response:
        return Response(metrics.exposition(), media_type=EXPOSITION_CONTENT_TYPE)

    return app


def _record(
    predictions: list[Prediction], observations: ObservationLog, metrics: ServerMetrics
) -> None:
    observations.record(
        [
            ItemFeatures(embedding=p.embedding, confidence=p.score, label=p.label)
            for p in predictions
        ],
        at=time.time(),
    )
    for prediction in predictions:
        if prediction.score is not None:
            metrics.confidence.observe(prediction.score)


def _error(status: int, headers: Mapping[str, str] | None = None, **fields: Any) -> JSONResponse:
    return JSONResponse(error_body(**fields), status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    retry = {"Retry-After": RETRY_AFTER_SECONDS}

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _input_error(input_error_from_validation(exc.errors()))

    @app.exception_handler(InputError)
    async def on_input(_: Request, exc: InputError) -> JSONResponse:
        return _input_error(exc)

    @app.exception_handler(NotReadyError)
    async def on_not_ready(_: Request, exc: NotReadyError) -> JSONResponse:
        return _error(503, retry, code="not_ready", message=str(exc))

    @app.exception_handler(QueueFullError)
    async def on_queue_full(_: Request, exc: QueueFullError) -> JSONResponse:
        return _error(503, retry, code="queue_full", message=str(exc))

    @app.exception_handler(BatcherClosedError)
    async def on_closed(_: Request, exc: BatcherClosedError) -> JSONResponse:
        return _error(503, retry, code="shutting_down", message=str(exc))

    @app.exception_handler(ModelFailure)
    async def on_model_failure(_: Request, exc: ModelFailure) -> JSONResponse:
        metrics.model_errors.inc()
        error_id = str(uuid.uuid4())
        log.error("model failure %s: %s", error_id, exc, exc_info=exc.cause)
        message = f"the model failed on this input ({type(exc.cause).__name__}); see the "
        message += f"server log for error id {error_id}"
        return _error(500, code="model_error", message=message, error_id=error_id)

    @app.exception_handler(HTTPException)
    async def on_http(_: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, exc.headers, code=code, message=str(exc.detail))

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        error_id = str(uuid.uuid4())
        log.error("internal error %s", error_id, exc_info=exc)
        message = f"internal error; see the server log for error id {error_id}"
        return _error(500, code="internal_error", message=message, error_id=error_id)


def _input_error(exc: InputError) -> JSONResponse:
    return _error(422, code=exc.code, message=exc.message, field=exc.field, limit=exc.limit)
