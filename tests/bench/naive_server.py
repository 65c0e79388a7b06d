"""Baseline for the benchmark: the same model behind FastAPI, one forward pass per request.

This is how a model server is usually first written: a sync route that runs the model on the one
text it received (FastAPI runs sync routes on its thread pool, so concurrent requests run
concurrent batch-of-1 forwards). ``python tests/bench/naive_server.py --port 8001``.
"""

from __future__ import annotations

import argparse
import threading
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from inference.domain import PredictItem, Predictor


def create_app(threads: int | None) -> FastAPI:
    app = FastAPI()
    state: dict[str, Predictor] = {}

    def load() -> None:
        from inference.models import load_predictor

        predictor = load_predictor(model_dir=None, task="auto", device="cpu", threads=threads)
        predictor.warm_up()
        state["predictor"] = predictor

    threading.Thread(target=load, daemon=True).start()

    @app.get("/ready")
    def ready() -> JSONResponse:
        return JSONResponse({"ready": "predictor" in state}, status_code=200 if state else 503)

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        (prediction,) = state["predictor"].predict_batch([PredictItem(text=str(body["inputs"]))])
        return {"predictions": [{"label": prediction.label, "score": prediction.score}]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    uvicorn.run(create_app(args.threads), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
