"""Start the server: check the optional dependencies and the exposure rules, then run uvicorn.

``llava-agent serve`` calls :func:`run_server`; tests and embedders can call :func:`build_app`
and run the app with any ASGI server.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.core.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def check_dependencies() -> None:
    """Raise a clear error when the ``serve`` extra is not installed."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(
            f"the server needs {' and '.join(missing)}, which are not installed; install them with "
            "pip install 'llava-agent[serve]'"
        )


def configure_logging(verbose: bool = False) -> None:
    """One line per event on stderr, each with the request id it belongs to."""
    from agent.serve.request_context import RequestIdFilter

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in ("agent.serve", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def build_app(config: AppConfig, api_keys: Sequence[str] = ()) -> Any:
    """The ASGI app for ``config`` plus keys given on the command line; refuses an open non-loopback server."""
    check_dependencies()
    from agent.serve.app import create_app
    from agent.serve.security import ApiKeys, check_exposure

    settings = config.serve
    keys = ApiKeys.gather(api_keys, settings.api_keys, settings.api_keys_file)
    check_exposure(settings.host, keys)
    return create_app(config, keys=keys)


def page_address(host: str, port: int) -> str:
    """The chat page's address on this machine (a server on every interface is reached on loopback)."""
    name = host.strip().strip("[]")
    if name in ("0.0.0.0", "::", ""):
        name = "127.0.0.1"
    return f"http://[{name}]:{port}/" if ":" in name else f"http://{name}:{port}/"


def _open_when_started(server: Any, host: str) -> None:
    """Open the page in the default browser once the server listens (or print its address when none opens)."""
    import time
    import webbrowser

    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.1)
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else 0
    url = page_address(host, port)
    logger.info("the chat page: %s", url)
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        logger.warning("no browser could be opened; open %s", url)


def run_server(
    config: AppConfig, api_keys: Sequence[str] = (), *, verbose: bool = False, open_page: bool = False
) -> int:
    """Serve until interrupted; returns the exit code. ``open_page``: open the chat page in the browser once up."""
    app = build_app(config, api_keys)
    import uvicorn

    settings = config.serve
    configure_logging(verbose)
    logger.info(
        "serving %s%s on http://%s:%d (%s)", app.state.server.model_name,
        f" and {settings.agent_model}" if settings.agent_model else "", settings.host, settings.port,
        f"{len(app.state.server.keys)} API key(s)" if app.state.server.keys.required else "no API key: loopback only",
    )  # fmt: skip
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,  # our handler: every line carries its request id
            access_log=False,  # agent.serve.access logs each request with its id instead
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            server_header=False,
            timeout_graceful_shutdown=5,
        )
    )
    if open_page:
        import threading

        threading.Thread(target=_open_when_started, args=(server, settings.host), name="open-page", daemon=True).start()
    try:
        server.run()
    except OSError as exc:  # the port is taken, the address cannot be bound
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port} ({exc}); pick another --port") from None
    return 0
