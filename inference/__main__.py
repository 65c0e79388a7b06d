"""``python -m inference``: run the model server."""

from inference.server import main

raise SystemExit(main())
