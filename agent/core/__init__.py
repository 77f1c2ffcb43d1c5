"""The shared kernel every layer builds on: errors, configuration, defaults, the runtime policy
(device, dtype, 4-bit), the one model manager, files and image rules. It imports no other layer."""

from __future__ import annotations

from agent.core.lazy import lazy_exports

_EXPORTS = {
    "AppConfig": "agent.core.config",
    "load_config": "agent.core.config",
    "ModelManager": "agent.core.model_manager",
    "get_model_manager": "agent.core.model_manager",
    "resolve_device": "agent.core.runtime",
    "resolve_precision": "agent.core.runtime",
    "resolve_training_precision": "agent.core.runtime",
    "load_image": "agent.core.images",
    "resolve_allowed_path": "agent.core.files",
    "write_new_artifact": "agent.core.files",
    "atomic_write_text": "agent.core.files",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
