"""Start the server: check the optional dependencies and the exposure rules, then run uvicorn.

``llava-agent serve`` calls :func:`run_server`; tests and embedders can call :func:`build_app`
and run the app with any ASGI server.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.core.errors import InputError

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


def _checked_keys(config: AppConfig, api_keys: Sequence[str]) -> Any:
    """The keys from the command line and the config; refuses an open non-loopback server."""
    from agent.serve.security import ApiKeys, check_exposure

    settings = config.serve
    keys = ApiKeys.gather(api_keys, settings.api_keys, settings.api_keys_file)
    check_exposure(settings.host, keys)
    return keys


def build_app(config: AppConfig, api_keys: Sequence[str] = ()) -> Any:
    """The ASGI app for ``config`` plus keys given on the command line; refuses an open non-loopback server."""
    check_dependencies()
    from agent.serve.app import create_app

    return create_app(config, keys=_checked_keys(config, api_keys))


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address the server could not listen on (a port in use, a host not of this machine).

    Checked before anything loads, by binding the address as the server will (``SO_REUSEADDR``);
    port 0 (a free port) always works.
    """
    import errno
    import socket

    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"cannot listen on host {host!r} ({exc.strerror}); give a name or address of this machine "
                         "with --host") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise InputError(f"port {port} on {host} is already in use by another process; stop that process "
                                     "or pick another port with --port (0 picks a free one)") from None
                if exc.errno == errno.EACCES:
                    raise InputError(f"port {port} on {host} needs administrator rights; pick a port above 1023 with "
                                     "--port") from None
                raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port") from None


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
    check_dependencies()
    settings = config.serve
    keys = _checked_keys(config, api_keys)
    check_port(settings.host, settings.port)  # one clear line, before the model stack is even imported
    from agent.serve.app import create_app

    app = create_app(config, keys=keys)
    import uvicorn

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
    except OSError as exc:  # the address cannot be bound after all
        raise InputError(f"cannot listen on {settings.host}:{settings.port} ({exc}); pick another port with --port") from None
    return 0
