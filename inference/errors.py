"""Errors the model server raises. Messages say what was wrong, where, and what to do.

The hierarchy is small on purpose: the HTTP layer (``inference.app``) maps each class to one status
code and the contract's JSON error shape; nothing below the HTTP layer knows about status codes.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of every error the server raises on purpose."""


class ConfigError(InferenceError):
    """A configuration file (e.g. the intents YAML) is invalid. ``problems`` lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ModelLoadError(InferenceError):
    """The model directory cannot be loaded or the warm-up forward pass failed."""


class InputError(InferenceError):
    """A request input breaks a limit or a rule of the task (HTTP 422).

    ``code`` is a stable machine-readable name, ``field`` the JSON path of the offending value
    (``inputs[3]``, ``top_k``) and ``limit`` the limit it broke, when there is one.
    """

    def __init__(
        self, *, code: str, message: str, field: str | None = None, limit: int | None = None
    ) -> None:
        self.code = code
        self.message = message
        self.field = field
        self.limit = limit
        super().__init__(message)


class QueueFullError(InferenceError):
    """The batching queue cannot take the request's items now; the client should retry (503)."""


class BatcherClosedError(InferenceError):
    """The batcher was stopped (server shutting down) before the item was processed (503)."""


class ModelFailure(InferenceError):
    """The model raised while running a batch (500). ``cause`` is the original exception."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(f"model forward failed: {type(cause).__name__}: {cause}")


class NotReadyError(InferenceError):
    """The model is not loaded (yet, or loading failed); the message says which (503)."""
