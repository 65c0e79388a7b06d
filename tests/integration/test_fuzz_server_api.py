"""Property-based fuzzing of the model server's HTTP API from its own ``/openapi.json``.

A real server process on loopback (a tiny random classifier: the model's answers do not matter
here, the HTTP layer does) gets schemathesis-generated valid and invalid requests for every
operation: no 5xx, no hang, answers as the schema says (tests/integration/fuzz_support.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis

from tests.integration.conftest import RunningServer, TinyModels, running_server
from tests.integration.fuzz_support import fuzz_operation, operations

pytestmark = pytest.mark.integration

OPERATIONS = {  # operation -> examples; /predict runs the model, the rest are cheap
    ("POST", "/predict"): 150,
    ("GET", "/health"): 20,
    ("GET", "/ready"): 20,
    ("GET", "/version"): 20,
    ("GET", "/v1/observations"): 80,
    ("GET", "/metrics"): 20,
}


@pytest.fixture(scope="module")
def fuzzed_server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    args = ["--model", str(tiny_models.sequence_classifier), "--max-wait-ms", "1"]
    with running_server(args) as server:
        yield server


@pytest.fixture(scope="module")
def server_schema(fuzzed_server: RunningServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(fuzzed_server.url + "/openapi.json")


def test_every_operation_of_the_schema_is_fuzzed(server_schema: schemathesis.BaseSchema) -> None:
    assert operations(server_schema) == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS))
def test_server_operation_never_fails_and_answers_as_its_schema_says(
    server_schema: schemathesis.BaseSchema, fuzzed_server: RunningServer, method: str, path: str
) -> None:
    examples = OPERATIONS[(method, path)]

    sent = fuzz_operation(
        server_schema, method, path, base_url=fuzzed_server.url, max_examples=examples
    )

    assert sent >= 1  # an operation without parameters has one distinct request
