"""/predict request parsing and limits, without a server."""

from __future__ import annotations

import pytest

from inference.errors import InputError
from inference.schemas import check_page_limit, field_path, parse_predict_request
from inference.validation import InputLimits, check_request

LIMITS = InputLimits(max_chars=10, max_items=3)


def error(call: object, *args: object) -> InputError:
    with pytest.raises(InputError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def test_a_single_string_becomes_a_list_of_one() -> None:
    request = parse_predict_request(b'{"inputs": "hello"}')
    assert (request.inputs, request.top_k) == (["hello"], 5)


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"{nope", "invalid_json", "body"),
        (b"   ", "missing_body", "body"),
        (b'"text"', "invalid_type", "body"),
        (b'{"inputs": null}', "invalid_type", "inputs"),
        (b'{"inputs": ["a", {"b": 1}]}', "invalid_type", "inputs[1]"),
        (b'{"inputs": "a", "top_k": 2.5}', "invalid_type", "top_k"),
        (b'{"inputs": "a", "top_k": true}', "invalid_type", "top_k"),
        (b'{"text": "a"}', "missing_field", "inputs"),
    ],
)
def test_malformed_bodies_name_the_field(body: bytes, code: str, field: str) -> None:
    problem = error(parse_predict_request, body)
    assert (problem.code, problem.field) == (code, field)
    assert problem.message.startswith(field + ":")


def test_limits_are_checked_in_field_order() -> None:
    problem = error(check_request, ["ok", "x" * 11, ""], 5, LIMITS)
    assert (problem.code, problem.field, problem.limit) == ("text_too_long", "inputs[1]", 10)
    assert problem.message == "inputs[1]: text has 11 characters; the limit is 10"


def test_too_many_inputs_names_the_limit() -> None:
    problem = error(check_request, ["a"] * 4, 5, LIMITS)
    assert problem.message == "inputs: 4 texts in one request; the limit is 3"


def test_whitespace_only_text_is_empty() -> None:
    problem = error(check_request, ["\n\t "], 5, LIMITS)
    assert (problem.code, problem.field) == ("empty_text", "inputs[0]")


def test_top_k_must_be_between_1_and_50() -> None:
    problem = error(check_request, ["a"], 0, LIMITS)
    assert problem.message == "top_k: 0 is out of range; it must be from 1 to 50"


def test_valid_request_passes() -> None:
    check_request(["a", "bb"], 50, LIMITS)


def test_page_limit_defaults_and_bounds() -> None:
    assert check_page_limit(None, 4096) == 1000
    assert check_page_limit(None, 10) == 10
    assert error(check_page_limit, 11, 10).limit == 10


def test_field_paths_drop_the_location_prefix() -> None:
    assert field_path(("body", "inputs", 3)) == "inputs[3]"
    assert field_path(("query", "after")) == "after"
    assert field_path(("body",)) == "body"
