"""Session-wide hooks: the fault matrix page (tests/reliability.py)."""

from __future__ import annotations

import pytest

from tests import reliability


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0:
        message = reliability.write_if_complete()
        if message:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(message)
