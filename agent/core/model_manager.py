"""The one model manager every model is loaded through: the chat model, the tool models, the embedders.

A model is loaded the first time something asks for it (with a log line and the loader's own
progress bars), placed on its device, and kept for the next call. Each device has a memory
budget (``tools.memory_budget_gb``, e.g. ``{cuda = 12, cpu = 8}``); when a new model would not
fit, the least recently used models that no call is using right now are evicted until it does.
Concurrent first use of the same key loads the weights once: later callers wait for the first.

Usage::

    manager = get_model_manager()
    with manager.use(("clip", model_id, "cpu"), load_clip, device="cpu") as (model, processor):
        ...
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agent.core.errors import ConfigError, LlavaAgentError, ModelLoadError

if TYPE_CHECKING:
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")
GIB = 1024**3


def _device_key(device: str) -> str:
    """``cuda`` and ``cuda:0`` share one budget; other indices are separate devices."""
    return "cuda:0" if device == "cuda" else device


def model_size_bytes(obj: Any) -> int:
    """Bytes held by the parameters and buffers of a torch module, a diffusers pipeline, or a tuple of them.

    Anything else that holds weights outside torch (an ONNX Runtime session) says so with an
    integer ``weight_bytes`` attribute.
    """
    seen: set[int] = set()

    def module_bytes(module: Any) -> int:
        total = 0
        for tensor in list(module.parameters()) + list(module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
        return total

    def walk(item: Any) -> int:
        if hasattr(item, "parameters") and hasattr(item, "buffers"):
            return module_bytes(item)
        declared = getattr(item, "weight_bytes", None)
        if isinstance(declared, int) and not isinstance(declared, bool):
            return declared
        if isinstance(item, (tuple, list)):
            return sum(walk(x) for x in item)
        if isinstance(item, Mapping):
            return sum(walk(x) for x in item.values())
        fields = getattr(item, "__dataclass_fields__", None)  # e.g. the chat model's LoadedModel
        if fields is not None:
            return sum(walk(getattr(item, name)) for name in fields)
        components = getattr(item, "components", None)  # a diffusers pipeline
        if isinstance(components, Mapping):
            return sum(walk(x) for x in components.values())
        return 0

    return walk(obj)


def checkpoint_size_bytes(model_id_or_path: str) -> int | None:
    """Size of the weight files in a local checkpoint folder, or None for a hub id (not known before loading)."""
    folder = Path(model_id_or_path).expanduser()
    if not folder.is_dir():
        return None
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in {".safetensors", ".bin", ".pt"})
    return total or None


_FINGERPRINT_SAMPLES = 32
_FINGERPRINT_BLOCK = 1 << 16
_fingerprints: dict[tuple[Any, ...], str] = {}


def model_fingerprint(model_id_or_path: str) -> str:
    """A short identity of a checkpoint's weights, to tell two versions of "the same" model apart.

    For a local folder: a SHA-256 over its ``config.json`` and each weight file's size and
    content (whole when under 64 MiB, else 32 blocks of 64 KiB spread over it), so retraining
    into the same folder gives a new fingerprint while copying the folder keeps it. For a hub
    id: the id and the revision of its cached snapshot when there is one. Cached per process.
    """
    import hashlib

    folder = Path(model_id_or_path).expanduser()
    if not folder.is_dir():
        revision = None
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_id_or_path, "config.json")
            revision = Path(cached).parent.name if isinstance(cached, str) else None
        except Exception:  # an odd id or a broken cache: the id alone identifies it
            revision = None
        return f"{model_id_or_path}@{revision}" if revision else model_id_or_path
    files = sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix in {".safetensors", ".bin", ".pt"}
                                                                     or p.name == "config.json"))
    key = (str(folder.resolve()), *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key in _fingerprints:
        return _fingerprints[key]
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder)}:{size}".encode())
        with open(path, "rb") as handle:
            if size <= 64 * 2**20:
                digest.update(handle.read())
            else:
                for n in range(_FINGERPRINT_SAMPLES):
                    handle.seek(n * (size - _FINGERPRINT_BLOCK) // (_FINGERPRINT_SAMPLES - 1))
                    digest.update(handle.read(_FINGERPRINT_BLOCK))
    _fingerprints[key] = digest.hexdigest()[:16]
    return _fingerprints[key]


@dataclass
class _Entry:
    value: Any
    device: str
    size_bytes: int
    in_use: int = 0
    last_used: float = 0.0
    extra_bytes: int = 0  # part of size_bytes: caches the model keeps beside its weights


class ModelManager:
    """Lazily loads, shares and evicts the models tools use, within a memory budget per device.

    Args:
        budgets_gb: memory budget per device in GiB (``{"cuda": 12, "cpu": 8}``); a device without
            a budget is unlimited.
    """

    def __init__(self, budgets_gb: Mapping[str, float] | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # least recently used first
        self._loading: dict[Hashable, Future] = {}
        self._reserved: dict[Hashable, tuple[str, int]] = {}  # room held for loads in progress
        self._budgets: dict[str, int] = {}
        self.evictions: list[Hashable] = []  # keys in eviction order, for inspection
        self.load_count: dict[Hashable, int] = {}
        self.set_budgets(budgets_gb or {})

    # -- budgets ---------------------------------------------------------------------------------
    def set_budgets(self, budgets_gb: Mapping[str, float]) -> None:
        """Replace the per-device budgets (GiB)."""
        budgets: dict[str, int] = {}
        for device, gigabytes in budgets_gb.items():
            if not isinstance(gigabytes, (int, float)) or gigabytes <= 0:
                raise ConfigError(
                    f"tools.memory_budget_gb[{device!r}] = {gigabytes!r} must be a positive number of GiB"
                )
            budgets[device] = int(gigabytes * GIB)
        with self._lock:
            self._budgets = budgets

    def budget_bytes(self, device: str) -> int | None:
        """The budget of ``device`` in bytes (``cuda:1`` falls back to a ``cuda`` budget), None if unlimited."""
        for candidate in (device, _device_key(device), device.split(":")[0]):
            if candidate in self._budgets:
                return self._budgets[candidate]
        return None

    def used_bytes(self, device: str) -> int:
        key = _device_key(device)
        with self._lock:
            return sum(e.size_bytes for e in self._entries.values() if _device_key(e.device) == key)

    def loaded_keys(self) -> list[Hashable]:
        """Keys of the loaded models, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    # -- getting models --------------------------------------------------------------------------
    @contextmanager
    def use(
        self, key: Hashable, loader: Callable[[], T], *, device: str, size_bytes: int | None = None
    ) -> Iterator[T]:
        """Get the model for ``key`` (loading it with ``loader()`` if needed) and hold it while in the block.

        A held model is never evicted. ``size_bytes`` is an estimate used to make room before
        loading; the real size is measured after loading and replaces it.
        """
        value = self._acquire(key, loader, device, size_bytes)
        try:
            yield value
        finally:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.in_use -= 1
                    entry.last_used = time.monotonic()

    def set_extra_bytes(self, key: Hashable, extra_bytes: int) -> None:
        """Count ``extra_bytes`` that a loaded model keeps beside its weights (e.g. its prompt cache) in its budget."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.size_bytes += int(extra_bytes) - entry.extra_bytes
                entry.extra_bytes = int(extra_bytes)

    def room_for_extra(self, key: Hashable) -> int | None:
        """The most bytes the extras of ``key`` may take within its device's budget (None: no budget)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return 0
            budget = self.budget_bytes(entry.device)
            if budget is None:
                return None
            device_key = _device_key(entry.device)
            others = sum(
                e.size_bytes for k, e in self._entries.items() if k != key and _device_key(e.device) == device_key
            )
            others += sum(size for k, (d, size) in self._reserved.items() if d == device_key and k != key)
            return max(0, budget - others - (entry.size_bytes - entry.extra_bytes))

    def evict(self, key: Hashable) -> bool:
        """Drop an idle model now; returns False when it is not loaded or is in use."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.in_use:
                return False
            self._drop_locked(key)
        self._release_memory()
        return True

    def clear(self) -> None:
        """Drop every idle model."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if not e.in_use]:
                self._drop_locked(key)
        self._release_memory()

    # -- internals -------------------------------------------------------------------------------
    def _acquire(self, key: Hashable, loader: Callable[[], Any], device: str, size_bytes: int | None) -> Any:
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.in_use += 1
                    entry.last_used = time.monotonic()
                    self._entries.move_to_end(key)
                    return entry.value
                pending = self._loading.get(key)
                if pending is None:
                    future: Future = Future()
                    self._loading[key] = future
                    break
            pending.result()  # wait for the loading thread; re-raises its error
            # loop: the entry is there now (or was evicted meanwhile and will be loaded again)

        try:
            value = self._load(key, loader, device, size_bytes)
        except BaseException as exc:
            with self._lock:
                self._loading.pop(key, None)
            future.set_exception(exc)
            raise
        with self._lock:
            self._loading.pop(key, None)
        future.set_result(None)
        return value

    def _load(self, key: Hashable, loader: Callable[[], Any], device: str, size_bytes: int | None) -> Any:
        budget = self.budget_bytes(device)
        if size_bytes is not None and budget is not None:
            if size_bytes > budget:
                raise ModelLoadError(self._too_big_message(key, device, size_bytes, budget))
            # Room is made, and held for this load, before any weight is read.
            self._make_room(key, device, size_bytes, budget, insert=None)
        logger.info("Loading %s on %s", _describe_key(key), device)
        started = time.perf_counter()
        try:
            value = loader()
        except BaseException as exc:
            with self._lock:
                self._reserved.pop(key, None)
            if isinstance(exc, (OSError, ValueError, RuntimeError, ImportError)) and not isinstance(
                exc, LlavaAgentError
            ):
                raise ModelLoadError(
                    f"could not load {_describe_key(key)} on {device}: {type(exc).__name__}: {exc}; check the "
                    "model id or folder, that it is in the local cache when offline, and the device's free memory"
                ) from exc
            raise
        measured = model_size_bytes(value) or size_bytes or 0
        logger.info(
            "Loaded %s on %s in %.1f s (%.1f MiB)",
            _describe_key(key), device, time.perf_counter() - started, measured / 2**20,
        )
        entry = _Entry(value, device, measured, in_use=1, last_used=time.monotonic())
        try:
            if budget is not None and measured > budget:
                raise ModelLoadError(self._too_big_message(key, device, measured, budget))
            self._make_room(key, device, measured, budget, insert=entry)
        except ModelLoadError:
            with self._lock:
                self._reserved.pop(key, None)
            del value, entry
            self._release_memory()
            raise
        return value

    def _make_room(self, key: Hashable, device: str, needed: int, budget: int | None, insert: _Entry | None) -> None:
        """Evict idle models (least recently used first) until ``needed`` bytes fit the device's budget.

        With ``insert=None`` the room is reserved for ``key`` (a load about to start); with an
        entry, the reservation is replaced by the loaded model, atomically with the eviction.
        """
        device_key = _device_key(device)
        evicted = False
        with self._lock:
            if budget is not None:
                used = sum(e.size_bytes for e in self._entries.values() if _device_key(e.device) == device_key)
                used += sum(size for k, (d, size) in self._reserved.items() if d == device_key and k != key)
                for candidate in list(self._entries):
                    if used + needed <= budget:
                        break
                    entry = self._entries[candidate]
                    if entry.in_use or _device_key(entry.device) != device_key:
                        continue
                    used -= entry.size_bytes
                    self._drop_locked(candidate)
                    evicted = True
                if used + needed > budget:
                    busy = [_describe_key(k) for k, e in self._entries.items() if _device_key(e.device) == device_key]
                    busy += [f"{_describe_key(k)} (loading)" for k, (d, _) in self._reserved.items()
                             if d == device_key and k != key]
                    raise ModelLoadError(
                        f"not enough of the {budget / GIB:.2f} GiB budget for {device} is free for a "
                        f"{needed / GIB:.2f} GiB model: {', '.join(busy)} are in use; wait for them to finish or "
                        "raise tools.memory_budget_gb"
                    )
            if insert is None:
                self._reserved[key] = (device_key, needed)
            else:
                self._reserved.pop(key, None)
                self._entries[key] = insert
                self.load_count[key] = self.load_count.get(key, 0) + 1
        if evicted:
            self._release_memory()

    def _drop_locked(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        self.evictions.append(key)
        logger.info("Evicted %s from %s (%.1f MiB)", _describe_key(key), entry.device, entry.size_bytes / 2**20)

    @staticmethod
    def _release_memory() -> None:
        gc.collect()
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    @staticmethod
    def _too_big_message(key: Hashable, device: str, size: int, budget: int) -> str:
        return (
            f"{_describe_key(key)} needs {size / GIB:.2f} GiB but the budget for {device} is {budget / GIB:.2f} GiB; "
            "raise tools.memory_budget_gb for this device or choose a smaller model"
        )


def _describe_key(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " ".join(str(part) for part in key)
    return str(key)


_default_manager: ModelManager | None = None
_default_lock = threading.Lock()


def get_model_manager(config: AppConfig | None = None) -> ModelManager:
    """The process-wide model manager; a config passed in sets its budgets."""
    global _default_manager
    with _default_lock:
        if _default_manager is None:
            _default_manager = ModelManager()
        manager = _default_manager
    if config is not None:
        manager.set_budgets(config.tools.memory_budget_gb)
    return manager
