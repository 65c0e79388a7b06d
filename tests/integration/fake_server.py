"""A tiny stand-in for the model server, with the same command line and endpoints (minimal).

Used as the process backend's ``command`` in integration tests so they exercise real processes,
sockets and signals without torch. ``--ignore-term`` makes it ignore SIGTERM (to test SIGKILL
escalation); ``--label``/``--score`` set what ``/predict`` answers for every input.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--release", default=os.environ.get("WARDEN_RELEASE", "dev"))
    parser.add_argument("--model", default="")
    parser.add_argument("--task", default="classify")
    parser.add_argument("--label", default="billing")
    parser.add_argument("--score", type=float, default=0.9)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/ready":
                self._json(200, {"ready": True, "release": args.release})
            elif self.path == "/version":
                self._json(200, {"release": args.release, "model": args.model, "pid": os.getpid()})
            else:
                self._json(404, {"error": {"code": "not_found", "message": self.path}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
            prediction = {"label": args.label, "score": args.score}
            self._json(200, {"task": args.task, "predictions": [prediction for _ in inputs]})

        def _json(self, status: int, document: object) -> None:
            data = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *values: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"fake server {args.release} listening on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
