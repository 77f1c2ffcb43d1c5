"""Memory: conversation threads, long-term memory, the CLIP image index, embedders and the Chroma client.

Importing this package is light: heavy libraries load inside the functions that need them.
"""

from __future__ import annotations

from agent.core.lazy import lazy_exports

_EXPORTS = {
    "ConversationStore": "memory.conversations",
    "LongTermMemory": "memory.long_term",
    "ImageIndex": "memory.image_index",
    "ClipEmbedder": "memory.embedders",
    "TextEmbedder": "memory.embedders",
    "get_chroma_client": "memory.chroma",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
