"""Warden's model server: micro-batched PyTorch inference over HTTP (``python -m inference``).

See docs/contracts.md for the HTTP API, metrics and command line. Importing this package does not
import torch; the model is loaded on a background thread once the server runs.
"""

__version__ = "0.1.0"
