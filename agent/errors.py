"""Errors the agent raises. Messages say what was wrong, where, and what to do."""

from __future__ import annotations


class WardenError(Exception):
    """Base class: anything the CLI may print as one line and exit non-zero."""


class ConfigError(WardenError):
    """A configuration or rule file is invalid. ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class BackendError(WardenError):
    """The engine refused or failed an operation."""


class StateError(WardenError):
    """The persisted state is inconsistent or cannot be opened."""


class ApiError(WardenError):
    """The agent API could not be reached or refused a request (CLI side)."""
