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
VIDEO_MODEL = "THUDM/CogVideoX-2b"
"""Text-to-video (diffusers ``CogVideoXPipeline``); about 13 GB of fp16 weights, a CUDA GPU in practice."""
SHAPE_MODEL = "openai/shap-e"
"""Text-to-3D (diffusers ``ShapEPipeline``)."""
SHAPE_IMAGE_MODEL = "openai/shap-e-img2img"
"""Image-to-3D (diffusers ``ShapEImg2ImgPipeline``)."""

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
VIDEO_MAX_FRAMES = 49
"""Longest clip generate_video makes, in frames (CogVideoX-2b is trained on 49: 6 s at 8 fps)."""
VIDEO_STEPS = 50
"""Denoising steps when a generate_video call gives none (CogVideoX's recommended 50)."""
SHAPE_STEPS = 64
"""Denoising steps when a generate_3d call gives none (Shap-E's recommended 64)."""
MESH_GRID_SIZE = 128
"""Samples per side of the grid a Shap-E latent is turned into a mesh on (cost grows with its cube)."""
