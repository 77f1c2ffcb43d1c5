"""The OpenAI-compatible server (``llava-agent serve``): the chat model and the agent over HTTP.

An application-level package: it wires ``agent.app`` (the agent) and ``agent.llava`` (the chat
model) to FastAPI routes; ``agent.cli`` only parses the command and calls :func:`run_server`.
FastAPI and uvicorn come with the ``serve`` extra (``pip install 'llava-agent[serve]'``).
"""

from __future__ import annotations

from agent.core.lazy import lazy_exports

_EXPORTS = {
    "create_app": "agent.serve.app",
    "build_app": "agent.serve.server",
    "run_server": "agent.serve.server",
    "ApiKeys": "agent.serve.security",
    "FairQueue": "agent.serve.queue",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
