"""Property-based fuzzing of one HTTP API operation from its OpenAPI document (schemathesis).

Used without schemathesis' pytest plugin (which does not support this pytest): each test picks
one operation, hypothesis draws valid *and* invalid requests for it from the schema, and every
answer must come within the timeout (no hang), never be a 5xx, and match the schema where the
schema describes it. Derandomized and bounded, so a run is repeatable and fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def operations(schema: schemathesis.BaseSchema) -> set[tuple[str, str]]:
    """Every ``(METHOD, path)`` the schema describes."""
    found = set()
    for result in schema.get_all_operations():
        op = result.ok()
        found.add((op.method.upper(), op.path))
    return found


def fuzz_operation(
    schema: schemathesis.BaseSchema,
    method: str,
    path: str,
    *,
    base_url: str,
    max_examples: int,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Send ``max_examples`` generated requests to ``method path``; returns how many were sent.
    Raises (hypothesis shrinks to the smallest failing request) when a check fails."""
    operation = schema[path][method]
    strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )
    sent = 0

    @settings(
        max_examples=max_examples,
        derandomize=True,  # the same requests every run: a failure reproduces
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(
            base_url=base_url, headers=dict(headers or {}), checks=CHECKS, timeout=timeout_s
        )

    run()
    return sent
