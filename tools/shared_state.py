"""One lock per shared model whose state a call mutates.

The model manager hands the *same* object to every call, and LangChain runs the calls of one
reply in parallel threads. Some models keep per-call state on themselves: a diffusers pipeline
sets its scheduler's timesteps and step index and its own guidance attributes during a call; a
VITS model reads ``speaking_rate`` and draws noise from the global RNG in its forward pass.
:func:`exclusive` serialises the calls on one such object, so parallel calls give exactly what
the same calls give one after another (the weights stay shared: no copy is made).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_by_id: dict[int, threading.Lock] = {}  # objects that cannot be weakly referenced
_guard = threading.Lock()


def lock_for(shared: Any) -> threading.Lock:
    """The lock of one shared model object (created on first use, dropped with the object)."""
    with _guard:
        try:
            lock = _locks.get(shared)
            if lock is None:
                lock = _locks[shared] = threading.Lock()
        except TypeError:  # not weakly referenceable or not hashable: keyed by identity instead
            lock = _by_id.setdefault(id(shared), threading.Lock())
        return lock


@contextlib.contextmanager
def exclusive(shared: Any) -> Iterator[Any]:
    """``with exclusive(pipeline) as pipeline:`` -- this call alone uses ``pipeline`` meanwhile."""
    with lock_for(shared):
        yield shared


__all__ = ["exclusive", "lock_for"]
