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
TEXT_EMBEDDER_RUNTIMES = ("auto", "onnx", "torch")
"""What runs the text embedder (``memory.text_embedder_runtime``): ``auto`` takes ONNX Runtime on a
CPU where the model's pipeline allows it (half the time of sentence-transformers there, the same
vectors: memory.onnx_text), else sentence-transformers."""
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
REPETITION_PENALTY = 1.2
"""Penalty on tokens the reply already used; 1.2 stops small greedy models looping on one sentence
(measured with bench/bench_repetition.py)."""
MAX_REPETITION_PENALTY = 3.0
NO_REPEAT_NGRAM_SIZE = 0

# -- semantic pre-routing (agent.app.routing) ---------------------------------------------------
ROUTING_MODES = ("model", "semantic", "hybrid")
"""Who picks the tool on a turn's first model call (``agent.routing``)."""
ROUTING = "hybrid"
"""Measured on the held-out routing set with the real SmolLM2 LLaVA (README, "Tool routing"):
hybrid beats the model alone with and without a tool-use adapter."""
ROUTING_THRESHOLD = 0.35
ROUTING_MARGIN = 0.20
ROUTING_NO_TOOL_THRESHOLD = 0.70
"""Calibrated on the built-in tools with ``python bench/bench_routing.py`` (never on the held-out set)."""
ROUTING_PRIOR_WEIGHT = 1.0
"""In ``hybrid`` mode, the router's probabilities as an equal expert beside the model's on a turn it
leaves to the model (agent.decoding.decision_prior; 0: the model alone). Fixed beforehand, not tuned."""

# -- the tool-use adapter recipe (agent.app.tool_adapter, llava-agent finetune tools) -------------
TOOL_ADAPTER_ROWS = 1600
"""Rows synthesised by default: one pass is 200 steps of 8."""
TOOL_ADAPTER_TRAINING = {
    "epochs": 1.0, "batch_size": 8, "learning_rate": 1e-3, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
    "lora_layers": None, "warmup_ratio": 0.1, "logging_steps": 5, "save_steps": 50, "max_length": 4096,
}
"""One pass over the rows at a high LoRA learning rate (measured on SmolLM2-135M: README, "Tool routing")."""
PREFIX_CACHE_ENTRIES = 4
"""Prompt prefixes the chat model keeps for reuse (a thread keeps one; a few threads interleave)."""
PREFIX_CACHE_MIB = 1024
"""Most MiB of cached keys/values (a 0.5B Qwen2 model: 12 KiB a token; llava-1.5-7b: 512 KiB)."""
PROMPT_LOOKUP = "calls"
"""Where the decode loop drafts copied text (README, "Fast agent turns": measured per mode)."""

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

# -- the OpenAI-compatible server (llava-agent serve) ------------------------------------------
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
AGENT_MODEL_NAME = "llava-agent"
"""The model name under which the server offers a full agent turn (tools run on the server)."""
SERVE_MAX_REQUEST_BYTES = 20 * 1024 * 1024
"""Largest request body accepted (images come base64-encoded inside it)."""
SERVE_MAX_IMAGE_PIXELS = 16_000_000
"""Largest image a server request may carry; lower than the local limit, since strangers send them."""
SERVE_MAX_IMAGES = 8
"""Images per request."""
SERVE_MAX_VIDEO_BYTES = 200 * 1024 * 1024
"""Largest video a caller may upload (``POST /v1/uploads``); a longer one is refused with 413."""
SERVE_MAX_QUEUE = 32
"""Requests waiting for the model; more are refused with 429."""
SERVE_MAX_BATCH = 4
"""Plain requests generated together when several wait (a CPU decode step costs about the same for 4 as for 1)."""
SERVE_REQUEST_TIMEOUT_S = 300.0
"""Seconds a request may take in all, waiting in the queue included."""
SERVE_MIN_API_KEY_CHARS = 16
BARK_MODEL = "suno/bark-small"
BARK_VOICE = "v2/en_speaker_6"
"""Bark voice preset used when a speak call names none (one of the presets the checkpoint ships)."""

# -- videos ------------------------------------------------------------------------------------
DESCRIBE_VIDEO_MAX_FRAMES = 8
"""Keyframes one describe_video call looks at (a multi-image chat model may take fewer)."""
MAX_VIDEO_PIXELS = 7680 * 4320
"""Largest video frame (width x height, 8K UHD) accepted; larger ones are refused before decoding."""
MAX_VIDEO_SECONDS = 1800.0
"""Longest stretch of video decoded per call (the whole video, or the requested time range)."""
MAX_FRAME_PIXELS = 448 * 448
"""Keyframes are scaled down to at most this many pixels before any model sees them."""
