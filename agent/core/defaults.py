"""Every default model id and limit, stated once; configuration, tools and stores read them from here."""

from __future__ import annotations

# -- models ------------------------------------------------------------------------------------
CHAT_MODEL_GPU = "llava-hf/llava-1.5-7b-hf"
"""The chat model used on CUDA when none is named (4-bit NF4 fits in about 4 GiB)."""
CHAT_MODEL_CPU = "llava-hf/llava-interleave-qwen-0.5b-hf"
"""The chat model used elsewhere when none is named (small enough for a CPU)."""
CAPTION_MODEL = "Salesforce/blip-image-captioning-large"
IMAGE_MODEL = "stabilityai/sd-turbo"
CLIP_MODEL = "openai/clip-vit-base-patch32"
VITS_MODEL = "facebook/mms-tts-eng"
TEXT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"

# -- the chat model's generation settings ------------------------------------------------------
MAX_NEW_TOKENS = 512
TEMPERATURE = 0.2
TOP_P = 0.95
MAX_TEMPERATURE = 5.0
PREFIX_CACHE_ENTRIES = 4
"""Prompt prefixes the chat model keeps for reuse (a thread keeps one; a few threads interleave)."""
PREFIX_CACHE_MIB = 1024
"""Most MiB of cached keys/values (a 0.5B Qwen2 model: 12 KiB a token; llava-1.5-7b: 512 KiB)."""

# -- inputs ------------------------------------------------------------------------------------
MAX_IMAGE_PIXELS = 50_000_000
"""Largest image (width x height) accepted anywhere; larger ones are refused before decoding."""
MAX_SPEECH_CHARS = 5000
IMAGE_STEPS = 1
"""Denoising steps when a generate_image call gives none (1-4 suit sd-turbo)."""
ESPEAK_VOICE = "en"
