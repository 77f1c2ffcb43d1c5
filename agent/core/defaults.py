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

# -- inputs ------------------------------------------------------------------------------------
MAX_IMAGE_PIXELS = 50_000_000
"""Largest image (width x height) accepted anywhere; larger ones are refused before decoding."""
MAX_SPEECH_CHARS = 5000
IMAGE_STEPS = 1
"""Denoising steps when a generate_image call gives none (1-4 suit sd-turbo)."""
ESPEAK_VOICE = "en"
BARK_MODEL = "suno/bark-small"
BARK_VOICE = "v2/en_speaker_6"
"""Bark voice preset used when a speak call names none (one of the presets the checkpoint ships)."""

# -- videos ------------------------------------------------------------------------------------
VIDEO_MAX_FRAMES = 8
"""Keyframes one describe_video call looks at (a multi-image chat model may take fewer)."""
MAX_VIDEO_PIXELS = 7680 * 4320
"""Largest video frame (width x height, 8K UHD) accepted; larger ones are refused before decoding."""
MAX_VIDEO_SECONDS = 1800.0
"""Longest stretch of video decoded per call (the whole video, or the requested time range)."""
MAX_FRAME_PIXELS = 448 * 448
"""Keyframes are scaled down to at most this many pixels before any model sees them."""
