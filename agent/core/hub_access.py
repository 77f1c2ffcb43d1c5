"""Faults of the outside world fail fast and quietly: no network, a hub that does not answer.

Loading a model by hub id (``llava-hf/...``) makes ``transformers`` ask the hub about each file,
and without a network ``huggingface_hub`` retries every request five times with backoff -- minutes
of ``Retrying in 8s`` warnings over the chat prompt before the error. Before any such load,
:func:`hub_load_kwargs` decides in at most :data:`PROBE_TIMEOUT_S` seconds:

* a local folder: nothing to ask; a folder that does not exist: :class:`ModelNotFoundError` at once;
* ``HF_HUB_OFFLINE`` set: nothing to ask; a model not in the local cache: :class:`ModelNotFoundError`
  at once (instead of the library's own error from deep inside its loading code);
* the hub answers (one ``HEAD`` request, proxies honoured; the answer is remembered for a minute):
  load normally (downloads happen as usual);
* the hub does not answer and the model is in the local cache: the process switches to the
  hub's offline mode (as ``HF_HUB_OFFLINE=1`` would; for the rest of the session, said once in
  the log) and loads from the cache -- no request at all, no retries;
* the hub does not answer and the model is not cached: :class:`ModelNotFoundError` at once, one
  line, with the one download hint used everywhere (:func:`download_hint`: ``hf download MODEL``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from agent.core.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
PROBE_CACHE_S = 60.0
_probe: tuple[float, bool, str] | None = None
_probe_lock = threading.Lock()


def download_hint(model: str) -> str:
    """The one command that downloads ``model`` for offline use."""
    return f"hf download {model}"


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the model hub answers within ``timeout`` seconds: ``(answered, why not)`` (cached a minute)."""
    global _probe
    with _probe_lock:
        if _probe is not None and time.monotonic() - _probe[0] < PROBE_CACHE_S:
            return _probe[1], _probe[2]
        import httpx

        endpoint = hub_endpoint()
        try:
            httpx.head(endpoint, timeout=timeout, follow_redirects=False, trust_env=True)
            answer = (True, "")
        except httpx.TimeoutException:
            answer = (False, f"no answer from {endpoint} within {timeout:g} s")
        except (httpx.HTTPError, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            answer = (False, f"{endpoint} cannot be reached: {reason}")
        _probe = (time.monotonic(), *answer)
        return answer


def reset_probe() -> None:
    """Forget the last answer (after the network came back, and in tests)."""
    global _probe
    with _probe_lock:
        _probe = None


def work_offline(reason: str) -> None:
    """Use only the local cache from now on in this process (the hub's offline mode)."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        logger.warning("the model hub cannot be reached (%s); working from the local model cache", reason)
    constants.HF_HUB_OFFLINE = True  # read at each request by huggingface_hub and transformers
    os.environ["HF_HUB_OFFLINE"] = "1"  # and by processes started from here


def is_cached(model: str, filename: str = "config.json") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, filename), str)
    except Exception:  # a malformed id: whoever loads it reports that
        return False


def looks_like_folder(model: str) -> bool:
    """Whether ``model`` is written as a folder (absolute, ``./``, ``../``, ``~``) rather than a hub id."""
    return Path(model).expanduser().is_absolute() or model.startswith((".", "~"))


def hub_load_kwargs(model: str, *, what: str = "model", config_file: str = "config.json") -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that never wait on an unreachable hub (see the module doc).

    Raises :class:`ModelNotFoundError` (one line, with :func:`download_hint`) at once when the
    model is a folder that does not exist, or is neither local nor cached while ``HF_HUB_OFFLINE``
    is set, and within seconds when it is neither local nor cached and the hub cannot be reached.
    """
    if Path(model).expanduser().exists():
        return {}
    if looks_like_folder(model):
        raise ModelNotFoundError(f"the {what} folder {model!r} does not exist; set an existing folder or a hub id")
    if offline_mode():
        if is_cached(model, config_file):
            return {}
        raise ModelNotFoundError(
            f"{what} {model!r} is not in the local cache and HF_HUB_OFFLINE is set; download it once while online "
            f"with `{download_hint(model)}`, or set a local folder in the config"
        )
    reachable, reason = hub_reachable()
    if reachable:
        return {}
    if is_cached(model, config_file):
        work_offline(reason)
        return {"local_files_only": True}
    raise ModelNotFoundError(
        f"{what} {model!r} is not in the local cache and the model hub cannot be reached ({reason}); "
        f"download it once while online with `{download_hint(model)}`, or set a local folder in the config"
    )


__all__ = ["PROBE_TIMEOUT_S", "download_hint", "hub_endpoint", "hub_load_kwargs", "hub_reachable", "is_cached",
           "looks_like_folder", "offline_mode", "reset_probe", "work_offline"]
