"""The model's lifecycle inside the server: load on a background thread, then say "ready".

The HTTP server starts answering ``/health`` at once; loading (including the torch import, which
takes seconds) happens on a daemon thread. ``/ready`` is 503 with a reason until the model has
loaded and a warm-up forward pass succeeded. If loading fails the server keeps running, ``/ready``
stays 503 with the reason, and the failure is logged at ERROR: a supervisor sees "not ready" and can
act, which beats a crash loop that hides the message.

Each load attempt's outcome and duration (from the start of loading to the end of the warm-up, not
counting ``--load-delay``) go to a ``LoadObserver``: the ``inference_model_load_duration_seconds``
histogram, by release and outcome.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from inference.domain import ModelInfo, Prediction, PredictItem, Predictor
from inference.errors import ConfigError, InferenceError, NotReadyError
from inference.modeldir import default_model_dir, detect_task, model_name, read_config
from inference.settings import Settings, TaskChoice

log = logging.getLogger(__name__)

LoadObserver = Callable[[str, float], None]
"""Called once per load attempt with (outcome "success" | "failure", seconds)."""


class ModelRuntime:
    """Holds the predictor once loaded and the reason the server is not ready until then."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_path, self.model_name, self.task = _describe_model(settings)
        self.reason = "model loading has not started"
        self.failed = False
        self._predictor: Predictor | None = None
        self._stopping = threading.Event()

    @property
    def ready(self) -> bool:
        """True once the model loaded and the warm-up pass succeeded."""
        return self._predictor is not None

    @property
    def info(self) -> ModelInfo | None:
        """What was loaded, or None before the model is ready."""
        return None if self._predictor is None else self._predictor.info

    def predictor(self) -> Predictor:
        """The loaded predictor; ``NotReadyError`` with the reason otherwise."""
        if self._predictor is None:
            raise NotReadyError(f"model is not ready: {self.reason}")
        return self._predictor

    def predict_batch(self, items: Sequence[PredictItem]) -> list[Prediction]:
        """Batch function for the batcher (runs on its worker thread)."""
        return self.predictor().predict_batch(items)

    def start_loading(
        self, on_ready: Callable[[ModelInfo], None], on_loaded: LoadObserver | None = None
    ) -> None:
        """Load on a daemon thread; ``on_ready`` is called on the current event loop, and
        ``on_loaded`` (from the loader thread) with the outcome and duration."""
        loop = asyncio.get_running_loop()
        observe = on_loaded or (lambda outcome, seconds: None)
        thread = threading.Thread(
            target=self._load, args=(loop, on_ready, observe), name="model-loader", daemon=True
        )
        thread.start()

    def stop(self) -> None:
        """Abandon a pending ``--load-delay`` wait (the loader thread is a daemon)."""
        self._stopping.set()

    def _load(
        self,
        loop: asyncio.AbstractEventLoop,
        on_ready: Callable[[ModelInfo], None],
        on_loaded: LoadObserver,
    ) -> None:
        settings = self.settings
        if settings.load_delay > 0:
            self.reason = f"waiting {settings.load_delay:g} s (--load-delay) before loading"
            if self._stopping.wait(settings.load_delay):
                return
        started = time.perf_counter()
        try:
            self.reason = f"loading {self.model_name} from {self.model_path or 'the package'}"
            read_config(settings.model or default_model_dir())  # fail fast, before torch loads
            from inference.models import load_predictor  # torch is imported here, off the loop
            from inference.precision import Precision

            predictor = load_predictor(
                model_dir=settings.model,
                task=settings.task,
                device=settings.device,
                intents_path=settings.intents,
                name=settings.model_name,
                threads=settings.threads,
                precision=Precision(quantize=settings.quantize, dtype=settings.dtype),
            )
            self.reason = "running the warm-up forward passes"
            predictor.warm_up(settings.length_buckets)
        except InferenceError as exc:
            detail = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
            self._fail(detail)
            on_loaded("failure", time.perf_counter() - started)
        except Exception as exc:
            log.exception("unexpected error while loading the model")
            self._fail(f"{type(exc).__name__}: {exc}")
            on_loaded("failure", time.perf_counter() - started)
        else:
            on_loaded("success", time.perf_counter() - started)
            loop.call_soon_threadsafe(self._become_ready, predictor, on_ready)

    def _become_ready(self, predictor: Predictor, on_ready: Callable[[ModelInfo], None]) -> None:
        self._predictor = predictor
        self.task = predictor.info.task
        self.reason = ""
        info = predictor.info
        log.info(
            "ready: %s from %s, task %s on %s (%s, quantize %s), weights sha256 %s",
            *(info.name, info.path, info.task, info.device, info.dtype, info.quantize),
            info.weights_sha256,
        )
        on_ready(info)

    def _fail(self, detail: str) -> None:
        self.failed = True
        self.reason = f"model load failed: {detail}"
        log.error(
            "%s -- /ready stays 503; fix the model or flags and restart the server", self.reason
        )


def _describe_model(settings: Settings) -> tuple[Path | None, str, TaskChoice]:
    """Cheap facts for /version before loading (no torch); load errors surface in the loader."""
    try:
        directory = default_model_dir() if settings.model is None else settings.model
    except InferenceError:
        return settings.model, settings.model_name or "unknown", settings.task
    name = model_name(directory, is_default=settings.model is None, override=settings.model_name)
    try:
        task: TaskChoice = detect_task(read_config(directory), settings.task)
    except InferenceError:
        task = settings.task
    return directory.resolve(), name, task
