"""Credentials for a Chroma server: token or basic auth, tenant and database, never printed.

Settings (``[memory]`` in the config file, or ``LLAVA_AGENT_MEMORY__<NAME>`` in the environment):

* ``chroma_token`` (+ ``chroma_token_header``: ``Authorization`` sends ``Bearer <token>``,
  ``X-Chroma-Token`` sends the token as is) -- token auth;
* ``chroma_username`` + ``chroma_password``, or ``http://user:password@host:port`` in
  ``chroma_url`` -- basic auth;
* ``chroma_tenant``, ``chroma_database``.

The token and the password are pydantic ``SecretStr``: their ``repr`` is masked, ``config show``
and the config snapshots saved next to artifacts leave them out, and every URL shown in a message
goes through :func:`redact_url`. Chroma 1.x's own server (``chroma run``) does not check
credentials itself; it is meant to sit behind a proxy that does (nginx, Caddy, a cloud gateway),
and these settings are what the client sends to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse, urlunparse

SECRET_FIELDS = frozenset({"chroma_token", "chroma_password"})
TOKEN_PROVIDER = "chromadb.auth.token_authn.TokenAuthClientProvider"
BASIC_PROVIDER = "chromadb.auth.basic_authn.BasicAuthClientProvider"


def redact_url(url: str | None) -> str:
    """``url`` with any password replaced by ``***`` (``http://ana:***@host:8000``)."""
    if not url:
        return str(url)
    parsed = urlparse(url)
    if parsed.password is None and parsed.username is None:
        return url
    host = parsed.hostname or ""
    if parsed.port:
        host = f"{host}:{parsed.port}"
    user = parsed.username or ""
    netloc = f"{user}:***@{host}" if parsed.password is not None else f"{user}@{host}"
    return urlunparse(parsed._replace(netloc=netloc))


def _url_credentials(url: str | None) -> tuple[str | None, str | None]:
    if not url:
        return None, None
    parsed = urlparse(url)
    username = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password is not None else None
    return username, password


def check_auth_settings(section: Any) -> None:
    """Refuse settings that cannot mean one thing (both token and basic auth, a password without a user)."""
    url_user, url_password = _url_credentials(getattr(section, "chroma_url", None))
    username = section.chroma_username or url_user
    has_password = section.chroma_password is not None or url_password is not None
    if url_user and section.chroma_username:
        raise ValueError("a user name is given both in memory.chroma_url and in memory.chroma_username; keep one")
    if url_password is not None and section.chroma_password is not None:
        raise ValueError("a password is given both in memory.chroma_url and in memory.chroma_password; keep one")
    if has_password and not username:
        raise ValueError("memory.chroma_password is set without memory.chroma_username; set both for basic auth")
    if username and not has_password:
        raise ValueError("basic auth needs a password too: set memory.chroma_password (or user:password@ in the URL)")
    if section.chroma_token is not None and username:
        raise ValueError("set either memory.chroma_token or basic auth (user name and password), not both")
    if section.chroma_token is not None and not section.chroma_token.get_secret_value().strip():
        raise ValueError("memory.chroma_token is empty; set the token or remove the setting")


@dataclass(frozen=True)
class ChromaServer:
    """Where a Chroma server is and how to authenticate to it (secrets masked in ``repr``)."""

    url: str
    """The URL without credentials."""
    tenant: str = "default_tenant"
    database: str = "default_database"
    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    """Extra ``chromadb.config.Settings`` for the client's auth provider."""
    auth: str = "none"

    @property
    def shown(self) -> str:
        return self.url + ("" if self.auth == "none" else f" ({self.auth} auth)")


def server_from_config(section: Any) -> ChromaServer | None:
    """The :class:`ChromaServer` of a ``[memory]`` section, or None for the embedded store."""
    url = getattr(section, "chroma_url", None)
    if not url:
        return None
    parsed = urlparse(url)
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    clean = urlunparse(parsed._replace(netloc=netloc))
    url_user, url_password = _url_credentials(url)
    username = section.chroma_username or url_user
    password = section.chroma_password.get_secret_value() if section.chroma_password is not None else url_password
    settings: dict[str, Any] = {}
    auth = "none"
    if section.chroma_token is not None:
        auth = "token"
        settings = {
            "chroma_client_auth_provider": TOKEN_PROVIDER,
            "chroma_client_auth_credentials": section.chroma_token.get_secret_value(),
            "chroma_auth_token_transport_header": section.chroma_token_header,
        }
    elif username:
        auth = "basic"
        settings = {"chroma_client_auth_provider": BASIC_PROVIDER,
                    "chroma_client_auth_credentials": f"{username}:{password or ''}"}
    return ChromaServer(clean, section.chroma_tenant, section.chroma_database, settings, auth)


def is_auth_failure(exc: BaseException) -> bool:
    """Whether a client error means the server refused the credentials (401/403)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("401", "403", "unauthorized", "forbidden", "authoriz", "authent"))


__all__ = ["ChromaServer", "SECRET_FIELDS", "check_auth_settings", "is_auth_failure", "redact_url", "server_from_config"]
