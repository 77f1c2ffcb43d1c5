"""``llava-agent doctor``: what this machine has, and what to do about what it lacks.

Each check is a small function returning a :class:`Check`; they are listed in :data:`CHECKS`
and run in order. No check downloads anything or loads a model.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.cli.terminal_media import find_audio_player
from agent.core.errors import LlavaAgentError
from agent.core.runtime import default_chat_model, resolve_device
from agent.llava.loading import resolve_spec
from memory.chroma import get_chroma_client
from memory.embedders import resolve_text_embedder
from tools.speak import ESPEAK_EXECUTABLE, INSTALL_HINT
from tools.video_cost import describe_duration, estimate_cpu_seconds

if TYPE_CHECKING:
    from agent.core.config import AppConfig

QUANTIZATION_WORDS = {"4bit": "4-bit NF4", "8bit": "8-bit (bitsandbytes)", "int8-weights": "int8 weights",
                      "none": "full precision"}


@dataclass(frozen=True)
class Check:
    name: str
    status: Literal["ok", "warn", "missing"]
    detail: str
    advice: str = ""
    required: bool = False


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def check_python(config: AppConfig) -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", "ok" if ok else "missing", sys.version.split()[0], "use Python 3.10 or newer", True)


def check_torch(config: AppConfig) -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("torch", "missing", "not installed", "pip install torch (see https://pytorch.org)", True)
    import torch

    # the same decisions ChatLlava makes when everything is "auto"
    spec = resolve_spec(config.model.model, quantization=config.model.quantization, dtype=config.model.dtype,
                        device=config.model.device)  # fmt: skip
    device, quantization, dtype = spec.device, spec.quantization, spec.dtype
    runs = f"the chat model runs on {device}, {QUANTIZATION_WORDS.get(quantization, quantization)}, {dtype}"
    if device == "cpu" and config.model.quantization == "auto":
        from agent.core.runtime import cpu_decode_timings

        measured = ", ".join(f"{QUANTIZATION_WORDS[name]} {ms:.1f} ms" for name, ms in cpu_decode_timings().items() if ms)
        runs += f" (one decode token through four 2048x4096 layers measured on this CPU: {measured})"
    if device == "cpu" and config.model.lm_head == "auto":
        from agent.llava.output_head import cpu_fastest_head, cpu_head_timings

        measured = ", ".join(f"{name} {ms:.1f} ms" for name, ms in cpu_head_timings().items() if ms)
        runs += f"; decode head: {cpu_fastest_head()} (one token through a 49152x1024 head here: {measured})"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("torch", "ok", f"{torch.__version__}, CUDA {torch.version.cuda}: {names}; {runs}")
    return Check(
        "torch",
        "warn",
        f"{torch.__version__}, no CUDA GPU: {runs} (slower than on a GPU)",
        "for a GPU, install a CUDA build of torch and an NVIDIA driver",
    )


def check_bitsandbytes(config: AppConfig) -> Check:
    version = _version("bitsandbytes")
    if version is None:
        return Check("bitsandbytes", "missing", "not installed: no 4-bit/8-bit quantization",
                     "pip install bitsandbytes, or set model.quantization = \"none\"")
    return Check("bitsandbytes", "ok", version)


def check_espeak(config: AppConfig) -> Check:
    path = shutil.which(ESPEAK_EXECUTABLE)  # the speak tool runs espeak-ng itself, never espeak
    if path is None:
        return Check("espeak-ng", "missing", "not found: the speak tool cannot run", INSTALL_HINT)
    return Check("espeak-ng", "ok", path)


def check_audio_player(config: AppConfig) -> Check:
    player = find_audio_player()
    if player is not None:
        return Check("audio player", "ok", player[0])
    return Check("audio player", "warn", "none found: /speak writes audio files but cannot play them",
                 "install pulseaudio-utils (paplay), alsa-utils (aplay) or ffmpeg (ffplay)")


def check_chroma(config: AppConfig) -> Check:
    if importlib.util.find_spec("chromadb") is None:
        return Check("chroma", "missing", "chromadb not installed", "pip install chromadb", True)
    from agent.core.chroma_auth import server_from_config

    server = server_from_config(config.memory)
    where = server.shown if server is not None else str(config.chroma_dir)
    try:
        client = get_chroma_client(config)
        names = [getattr(c, "name", str(c)) for c in client.list_collections()]
    except LlavaAgentError as exc:
        return Check("chroma", "missing", str(exc), "fix memory.chroma_url or data_dir in the config", True)
    return Check("chroma", "ok", f"{where} (collections: {', '.join(names) or 'none yet'})")


def _model_status(name: str, model: str, key: str, config_file: str = "config.json") -> Check:
    """Whether the model that config key ``key`` names is a local folder, cached or downloadable; what to do if missing."""
    from agent.core.hub_access import download_hint, is_cached, looks_like_folder, offline_mode

    folder = Path(model).expanduser()
    if folder.is_dir():
        return Check(name, "ok", f"local folder {folder}")
    if folder.exists() or looks_like_folder(model):
        problem = "is not a folder" if folder.exists() else "does not exist"
        return Check(name, "missing", f"{name} folder {model!r} {problem}",
                     f"set {key} in the config to the folder holding the {name}, or to its hub id")
    if is_cached(model, config_file):
        return Check(name, "ok", f"{model} (in the Hugging Face cache)")
    if offline_mode():
        return Check(name, "missing", f"{name} {model!r} is not in the local cache and HF_HUB_OFFLINE is set",
                     f"download it once while online (`{download_hint(model)}`), or set {key} in the config to a "
                     "local folder")
    return Check(name, "warn", f"{model} is not cached yet: it downloads on first use",
                 f"download now with `{download_hint(model)}` to work offline later, or set {key} to a local folder")


def check_chat_model(config: AppConfig) -> Check:
    model = config.model.model or default_chat_model(resolve_device(config.model.device))
    return _model_status("chat model", model, "model.model")


def check_tool_models(config: AppConfig) -> Iterator[Check]:
    tools = config.tools
    pipeline = "model_index.json"  # what a diffusers checkpoint has instead of config.json
    wanted = {
        "caption_image": [("caption model", tools.caption_model, "tools.caption_model", "config.json")],
        "generate_image": [("image model", tools.image_model, "tools.image_model", pipeline)],
        "search_images": [("CLIP model", tools.clip_model, "tools.clip_model", "config.json")],
        "generate_video": [("video model", tools.video_model, "tools.video_model", pipeline)],
        "generate_3d": [("3-D model", tools.shape_model, "tools.shape_model", pipeline),
                        ("3-D image model", tools.shape_image_model, "tools.shape_image_model", pipeline)],
        "speak": [("Bark model", tools.bark_model, "tools.bark_model", "config.json")] if tools.tts_engine == "bark" else [],
    }
    for tool, models in wanted.items():
        if tool in tools.enabled:
            yield from (_model_status(*model) for model in models)


def check_video_generation(config: AppConfig) -> Check:
    """Where generate_video would run; on a CPU it refuses unless tools.video_allow_cpu, so say how long it would take."""
    tools = config.tools
    enabled = "generate_video" in tools.enabled
    device = resolve_device(tools.device)
    opt_in = "" if enabled else " (not enabled: add generate_video to tools.enabled)"
    if device != "cpu":
        return Check("video generation", "ok", f"generate_video runs on {device}{opt_in}")
    seconds = estimate_cpu_seconds(49, 480, 720, tools.video_steps, 6.0)
    cost = f"a 49-frame 720x480 clip with {tools.video_steps} steps would take {describe_duration(seconds)} on a CPU"
    if tools.video_allow_cpu:
        return Check("video generation", "warn", f"generate_video runs on the CPU (tools.video_allow_cpu): {cost}{opt_in}",
                     "use a machine with a CUDA GPU for clips in minutes")
    return Check(
        "video generation", "warn" if enabled else "ok",
        f"the tools run on the CPU: generate_video refuses to run here ({cost}){opt_in}",
        "use a machine with a CUDA GPU, or set tools.video_allow_cpu = true to run on the CPU anyway",
    )


def check_generation_packages(config: AppConfig) -> Iterator[Check]:
    """PyAV (MP4 writing) for generate_video and trimesh (mesh files) for generate_3d, from optional extras."""
    for package, tool, extra in (("av", "generate_video", "video"), ("trimesh", "generate_3d", "3d")):
        version = _version(package)
        if version is not None:
            yield Check(package, "ok", f"{version} (for {tool})")
        elif tool in config.tools.enabled:
            yield Check(package, "missing", f"not installed: {tool} cannot save its files",
                        f"pip install 'llava-agent[{extra}]'")


def check_video(config: AppConfig) -> Check:
    """PyAV, which describe_video decodes with (only when the tool is enabled)."""
    if "describe_video" not in config.tools.enabled:
        return Check("video", "ok", "describe_video is not enabled")
    if importlib.util.find_spec("av") is None:
        return Check("video", "missing", "PyAV is not installed: describe_video cannot read videos",
                     "pip install 'llava-agent[video]'")
    return Check("video", "ok", "PyAV is installed (describe_video reads mp4, mov, webm, mkv and gif)")


def check_text_embedder(config: AppConfig) -> Check:
    if importlib.util.find_spec("sentence_transformers") is None:
        return Check("text embedder", "missing", "sentence-transformers not installed: no long-term memory",
                     "pip install 'llava-agent[embeddings]'")
    runtime = config.memory.text_embedder_runtime
    onnx_ready = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))
    if runtime == "onnx" and not onnx_ready:
        return Check("text embedder", "missing", "memory.text_embedder_runtime is 'onnx' but onnxruntime or onnx "
                     "is not installed", "pip install 'llava-agent[embeddings]', or set it to 'auto'")
    engine = "ONNX Runtime on a CPU" if runtime != "torch" and onnx_ready else "sentence-transformers"
    source = resolve_text_embedder(config.memory.text_embedder)
    if Path(source).is_dir():
        return Check("text embedder", "ok", f"{config.memory.text_embedder} -> {source} (runs in {engine})")
    return _model_status("text embedder", source, "memory.text_embedder")


def check_data_folder(config: AppConfig) -> Check:
    from agent.core.private_files import is_private

    folder = config.data_dir.expanduser()
    if not folder.exists():
        return Check("data folder", "ok", f"{folder} (created private, 0700, on first use)")
    if is_private(folder):
        return Check("data folder", "ok", f"{folder} (private)")
    mode = oct(folder.stat().st_mode & 0o777)[2:]
    return Check("data folder", "warn", f"{folder} is readable by other users (mode {mode}): conversations, "
                 "memories and attachments live there", f"chmod 700 {folder}")


CHECKS: list[Callable[[AppConfig], Check | Iterator[Check]]] = [
    check_python,
    check_data_folder,
    check_torch,
    check_bitsandbytes,
    check_espeak,
    check_audio_player,
    check_chroma,
    check_chat_model,
    check_tool_models,
    check_video,
    check_video_generation,
    check_generation_packages,
    check_text_embedder,
]


def run_checks(config: AppConfig) -> Iterator[Check]:
    """Run every check in order, yielding results as they come."""
    for check in CHECKS:
        result = check(config)
        if isinstance(result, Check):
            yield result
        else:
            yield from result
