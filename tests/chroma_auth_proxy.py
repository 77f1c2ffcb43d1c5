"""An authenticating reverse proxy in front of a real ``chroma run`` server, for tests.

Chroma 1.x's server checks no credentials itself; deployments put it behind a proxy that does.
This one checks a bearer token, an ``X-Chroma-Token`` header or basic auth, answers 401 otherwise,
and forwards everything else unchanged to the Chroma server.
"""

from __future__ import annotations

import base64
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


def start_proxy(upstream_port: int, *, token: str | None = None, basic: tuple[str, str] | None = None):
    """Start the proxy on a free port; returns ``(server, port)`` (``server.shutdown()`` stops it)."""
    expected: set[tuple[str, str]] = set()
    if token is not None:
        expected |= {("authorization", f"Bearer {token}"), ("x-chroma-token", token)}
    if basic is not None:
        encoded = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        expected.add(("authorization", f"Basic {encoded}"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _forward(self) -> None:
            sent = {(k.lower(), v) for k, v in self.headers.items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if not expected & sent:
                payload = b'{"error": "Unauthorized", "message": "missing or wrong credentials"}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            connection = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in HOP_HEADERS:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            connection.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]
