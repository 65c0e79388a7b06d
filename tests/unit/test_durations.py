"""Durations and sizes are parsed once at the boundary, with messages that say what to write."""

from __future__ import annotations

import pytest

from agent.durations import (
    DurationError,
    format_duration,
    format_number,
    parse_duration,
    parse_size,
    quote,
)

HINT = 'use a number with a unit: ms, s, m, h or d, e.g. "500ms", "30s", "1h30m"'
SIZE_HINT = 'use a number with a unit: B, KB, MB, GB, KiB, MiB or GiB, e.g. "512MiB", "1GB"'


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("1d", 86400.0),
        ("0", 0.0),
        (0, 0.0),
        (" 30s ", 30.0),
    ],
)
def test_parse_duration_gives_seconds(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bare_number_is_refused_because_the_unit_is_ambiguous() -> None:
    with pytest.raises(DurationError) as err:
        parse_duration(30)
    assert str(err.value) == f"duration 30 has no unit; {HINT}"


def test_unknown_unit_is_refused() -> None:
    with pytest.raises(DurationError) as err:
        parse_duration("5 minutes")
    assert str(err.value) == f'"5 minutes" is not a duration; {HINT}'


def test_units_must_go_from_largest_to_smallest() -> None:
    with pytest.raises(DurationError) as err:
        parse_duration("30m1h")
    assert str(err.value) == '"30m1h": units must go from largest to smallest, each once'


def test_empty_duration_is_refused() -> None:
    with pytest.raises(DurationError) as err:
        parse_duration("  ")
    assert str(err.value) == f"duration is empty; {HINT}"


def test_boolean_is_not_a_duration() -> None:
    with pytest.raises(DurationError) as err:
        parse_duration(True)
    assert str(err.value) == f"expected a duration, got true; {HINT}"


def test_list_is_not_a_duration() -> None:
    with pytest.raises(DurationError) as err:
        parse_duration([1])
    assert str(err.value) == f"expected a duration, got list; {HINT}"


def test_negative_duration_is_not_a_duration() -> None:
    with pytest.raises(DurationError) as err:
        parse_duration("-5s")
    assert str(err.value) == f'"-5s" is not a duration; {HINT}'


def test_absurdly_long_duration_is_refused() -> None:
    with pytest.raises(DurationError) as err:
        parse_duration("1" * 400 + "d")
    assert str(err.value).endswith("is too long")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("150MiB", 150 * 2**20),
        ("1GB", 1e9),
        ("500MB", 500e6),
        ("1.5GiB", 1.5 * 2**30),
        ("512m", 512 * 2**20),
        ("2 KiB", 2048.0),
        ("100", 100.0),
        (1048576, 1048576.0),
    ],
)
def test_parse_size_gives_bytes(text: str | int, size: float) -> None:
    assert parse_size(text) == size


def test_size_with_unknown_unit_is_refused() -> None:
    with pytest.raises(DurationError) as err:
        parse_size("3 parsecs")
    assert str(err.value) == f'"3 parsecs" has an unknown unit "parsecs"; {SIZE_HINT}'


def test_size_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(DurationError) as err:
        parse_size("lots")
    assert str(err.value) == f'"lots" is not a size; {SIZE_HINT}'


def test_negative_size_is_refused() -> None:
    with pytest.raises(DurationError) as err:
        parse_size(-1)
    assert str(err.value) == "size -1 must be a positive number of bytes"


def test_boolean_is_not_a_size() -> None:
    with pytest.raises(DurationError) as err:
        parse_size(False)
    assert str(err.value) == f"expected a size, got false; {SIZE_HINT}"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500 ms"), (30, "30 s"), (60, "1 min"), (90, "90 s"), (3600, "1 h"), (5400, "90 min")],
)
def test_format_duration_reads_like_an_operator_writes(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(183.2, "183"), (12.34, "12.3"), (0.5, "0.5"), (3.0, "3"), (0.00001, "0.00001"), (-0.0, "0")],
)
def test_format_number_keeps_about_three_digits(value: float, text: str) -> None:
    assert format_number(value) == text


def test_quote_escapes_newlines_and_shortens() -> None:
    assert quote("a\nb") == '"a\\nb"'
    assert quote("x" * 100, limit=5) == '"xxxx…"'
