"""Limits on what one ``/predict`` request may ask for; each violation names the field and limit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inference.errors import InputError

MAX_TOP_K = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class InputLimits:
    """Per-request limits (``--max-chars``, ``--max-items``)."""

    max_chars: int = 2000
    max_items: int = 64
    max_top_k: int = MAX_TOP_K


def check_request(texts: Sequence[str], top_k: int, limits: InputLimits) -> None:
    """Raise ``InputError`` for the first input that breaks a limit, in field order."""
    if not texts:
        raise InputError(
            code="empty_inputs",
            message="inputs: the list is empty; give at least one text",
            field="inputs",
        )
    if len(texts) > limits.max_items:
        raise InputError(
            code="too_many_inputs",
            message=f"inputs: {len(texts)} texts in one request; the limit is {limits.max_items}",
            field="inputs",
            limit=limits.max_items,
        )
    for index, text in enumerate(texts):
        check_text(index, text, limits)
    if not 1 <= top_k <= limits.max_top_k:
        raise InputError(
            code="top_k_out_of_range",
            message=f"top_k: {top_k} is out of range; it must be from 1 to {limits.max_top_k}",
            field="top_k",
            limit=limits.max_top_k,
        )


def check_text(index: int, text: str, limits: InputLimits) -> None:
    """One text must have something besides whitespace and at most ``max_chars`` characters."""
    field = f"inputs[{index}]"
    if not text.strip():
        raise InputError(
            code="empty_text",
            message=f"{field}: text is empty (or only whitespace)",
            field=field,
        )
    if len(text) > limits.max_chars:
        raise InputError(
            code="text_too_long",
            message=f"{field}: text has {len(text)} characters; the limit is {limits.max_chars}",
            field=field,
            limit=limits.max_chars,
        )
