"""``python -m agent`` is the ``warden`` command."""

from agent.cli import main

main()
