"""The chat page at ``/``: plain HTML, CSS and JavaScript shipped in the package (no build step, no CDN).

The page is a client of the server's own routes (chat completions with the agent model, the
agent's thread, tool and memory routes, generated files), so it follows their rules: an API key
when the server has keys (the page asks once and keeps it in ``sessionStorage``), each caller's
threads and files only. Its files are read from the package once; each answer carries a strict
Content-Security-Policy (scripts and styles from this server only, no inline script, generated
files shown through ``blob:`` URLs), so text the model writes can never run as code even if it
reached the page's markup, which the page's script never lets it do (``textContent`` only).
``serve.ui = false`` (``--no-ui``) leaves the page out.
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

from agent.serve.protocol import APIError

PAGE_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def page_file(name: str) -> bytes:
    """A file of the page, read from the installed package."""
    return resources.files("agent.serve").joinpath("static", name).read_bytes()


def _answer(name: str) -> Response:
    return Response(page_file(name), media_type=PAGE_FILES[name], headers={
        "content-security-policy": CONTENT_SECURITY_POLICY, "x-frame-options": "DENY",
        "referrer-policy": "no-referrer", "cache-control": "no-cache"})  # fmt: skip


def add_page_routes(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files at ``/ui/{name}`` (no key needed: the page holds no data)."""

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return _answer("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in PAGE_FILES:
            raise APIError(404, f"the page has no file {name[:80]!r}", code="not_found")
        return _answer(name)
