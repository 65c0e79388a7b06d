"""The HTTP wire format (docs/contracts.md): the request model, response and error JSON.

Pydantic lives only here, at the edge, with ``extra="forbid"``: a misspelt field is an error, not
silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictInt, StrictStr, ValidationError

from inference.domain import Prediction, TokenScore
from inference.errors import InputError
from inference.settings import Task

_LOCATIONS = {"body", "query", "path", "header"}
_REQUEST_EXAMPLE = '{"inputs": ["some text"]}'


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


class PredictRequest(BaseModel):
    """``POST /predict`` body: one text or a list of texts, and ``top_k`` for fill-mask."""

    model_config = ConfigDict(extra="forbid")

    inputs: Annotated[list[StrictStr], BeforeValidator(_one_or_many)]
    top_k: StrictInt = 5


PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}
"""The request body in the OpenAPI document (the route parses the body itself)."""

DEFAULT_PAGE_LIMIT = 1000


def parse_predict_request(body: bytes) -> PredictRequest:
    """Parse a ``/predict`` body whatever its Content-Type; ``InputError`` naming the field."""
    if not body.strip():
        message = f"body: the request has no body; send e.g. {_REQUEST_EXAMPLE}"
        raise InputError(code="missing_body", message=message, field="body")
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise input_error_from_validation(errors) from None


def check_page_limit(limit: int | None, capacity: int) -> int:
    """The ``limit`` query parameter of ``/v1/observations``: 1..capacity (default 1000)."""
    if limit is None:
        return min(DEFAULT_PAGE_LIMIT, capacity)
    if not 1 <= limit <= capacity:
        raise InputError(
            code="out_of_range",
            message=f"limit: {limit} is out of range; it must be from 1 to {capacity}",
            field="limit",
            limit=capacity,
        )
    return limit


def error_body(
    *,
    code: str,
    message: str,
    field: str | None = None,
    limit: int | None = None,
    error_id: str | None = None,
) -> dict[str, Any]:
    """The contract's error document ``{"error": {...}}``; optional keys only when set."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    if limit is not None:
        error["limit"] = limit
    if error_id is not None:
        error["error_id"] = error_id
    return {"error": error}


def field_path(loc: Sequence[int | str]) -> str:
    """``("body", "inputs", 3)`` -> ``inputs[3]``; the location prefix is dropped."""
    parts = list(loc[1:] if loc and loc[0] in _LOCATIONS else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or (str(loc[0]) if loc else "body")


def input_error_from_validation(errors: Sequence[Mapping[str, Any]]) -> InputError:
    """Reshape FastAPI/pydantic validation errors into one ``InputError`` (the first problem)."""
    error: Mapping[str, Any] = errors[0] if errors else {"loc": ("body",), "msg": "invalid"}
    kind = str(error.get("type", ""))
    field = field_path(tuple(error.get("loc", ())))
    ctx = error.get("ctx") or {}
    if kind == "json_invalid":
        detail = ctx.get("error", "could not parse")
        message = f"body: not valid JSON ({detail}); send e.g. {_REQUEST_EXAMPLE}"
        return InputError(code="invalid_json", message=message, field="body")
    if kind == "missing":
        what = "the request has no body" if field == "body" else "required field is missing"
        return InputError(code="missing_field", message=f"{field}: {what}", field=field)
    if kind == "extra_forbidden":
        return InputError(code="unknown_field", message=f"{field}: unknown field", field=field)
    if kind in {"model_attributes_type", "dict_type", "model_type"} and field == "body":
        message = f"body: must be a JSON object like {_REQUEST_EXAMPLE}"
        return InputError(code="invalid_type", message=message, field="body")
    for bound in ("ge", "gt", "le", "lt"):
        if bound in ctx:
            limit = int(ctx[bound])
            message = f"{field}: {error.get('msg', 'out of range')}"
            return InputError(code="out_of_range", message=message, field=field, limit=limit)
    return InputError(code="invalid_type", message=_type_message(kind, field, error), field=field)


def _type_message(kind: str, field: str, error: Mapping[str, Any]) -> str:
    if field == "inputs":
        return "inputs: must be a string or a list of strings"
    if kind == "string_type":
        return f"{field}: must be a string"
    if kind.startswith("int_"):
        return f"{field}: must be a whole number"
    return f"{field}: {error.get('msg', 'invalid value')}"


def predict_response(
    *, task: Task, release: str, model: str, predictions: Sequence[Prediction]
) -> dict[str, Any]:
    """The ``POST /predict`` 200 document."""
    return {
        "task": task,
        "release": release,
        "model": model,
        "predictions": [prediction_json(task, p) for p in predictions],
    }


def prediction_json(task: Task, prediction: Prediction) -> dict[str, Any]:
    """One prediction with the keys its task defines (docs/contracts.md)."""
    out: dict[str, Any] = {"label": prediction.label, "score": prediction.score}
    if task == "embed":
        out["embedding"] = list(prediction.embedding)
    elif task == "fill-mask":
        masks = [[_token_json(t) for t in mask] for mask in prediction.masks or ()]
        out["tokens"] = masks[0] if masks else []
        out["masks"] = masks
    else:
        out["scores"] = dict(prediction.scores or {})
    return out


def _token_json(token: TokenScore) -> dict[str, Any]:
    return {"token": token.token, "score": token.score, "token_id": token.token_id}
