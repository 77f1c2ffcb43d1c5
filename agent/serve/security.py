"""Who may call the server: API keys, and the rule that only a loopback server may run without them.

Keys come from ``--api-key`` flags, ``serve.api_keys`` in the config (or
``LLAVA_AGENT_SERVE__API_KEYS``, comma-separated) and ``serve.api_keys_file`` (one per line);
all of them are accepted. A presented key is compared with every configured key in constant time
(:func:`hmac.compare_digest` on SHA-256 digests, all keys checked whatever matches), so neither
the time taken nor an early exit tells an attacker how close a guess came.

Each key is a separate *caller*: threads and generated files belong to the caller that made them.
The caller's name is a short digest of its key, so the key itself never appears in logs or stores.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from agent.core.defaults import SERVE_MIN_API_KEY_CHARS
from agent.core.errors import ConfigError

LOCAL_CALLER = "local"
"""The caller of a server without keys (loopback only): everyone who can reach it is the same caller."""
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: what an HTTP header carries


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an interface to listen on) is reachable from this machine only."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def read_key_file(path: str | Path) -> list[str]:
    """Keys from a file, one per line; blank lines and ``#`` comments are skipped."""
    file = Path(path).expanduser()
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"serve.api_keys_file {str(path)!r} does not exist; create it with one key per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"serve.api_keys_file {str(path)!r} cannot be read ({exc}); check its permissions") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def check_key(key: str, source: str) -> str:
    if not _KEY_CHARS.match(key):
        raise ConfigError(f"an API key from {source} holds spaces or characters an HTTP header cannot carry; "
                          "use letters, digits and punctuation only")  # fmt: skip
    if len(key) < SERVE_MIN_API_KEY_CHARS:
        raise ConfigError(
            f"an API key from {source} is {len(key)} characters long, under the minimum of {SERVE_MIN_API_KEY_CHARS}; "
            "make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\""
        )
    return key


def caller_name(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


class ApiKeys:
    """The accepted keys; :meth:`caller` says who a presented key belongs to, in constant time."""

    def __init__(self, keys: Iterable[tuple[str, str]] = ()) -> None:
        """``keys``: (key, where it came from) pairs; each is checked for length and characters."""
        self._digests: list[tuple[bytes, str]] = []
        for key, source in keys:
            check_key(key, source)
            digest = hashlib.sha256(key.encode("utf-8")).digest()
            if all(digest != known for known, _ in self._digests):
                self._digests.append((digest, caller_name(key)))

    @classmethod
    def gather(cls, flags: Iterable[str], configured: Iterable[str], key_file: str | Path | None) -> ApiKeys:
        pairs = [(k, "--api-key") for k in flags] + [(k, "serve.api_keys") for k in configured]
        if key_file is not None:
            pairs += [(k, f"serve.api_keys_file {str(key_file)!r}") for k in read_key_file(key_file)]
        return cls(pairs)

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def caller(self, presented: str | None) -> str | None:
        """The caller owning ``presented``, or None. With no keys configured everyone is :data:`LOCAL_CALLER`."""
        if not self._digests:
            return LOCAL_CALLER
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", errors="surrogateescape")).digest()
        found = None
        for known, name in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(digest, known):
                found = name
        return found


def check_exposure(host: str, keys: ApiKeys) -> None:
    """Refuse to serve beyond this machine without keys."""
    if not keys.required and not is_loopback(host):
        raise ConfigError(
            f"host {host!r} is reachable from other machines, so API keys are required; pass --api-key KEY "
            "(or set serve.api_keys / LLAVA_AGENT_SERVE__API_KEYS / serve.api_keys_file), or listen on 127.0.0.1"
        )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
