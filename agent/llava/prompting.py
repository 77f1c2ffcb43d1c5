"""The one path from chat turns to model input text and images.

:func:`render_prompt` is used by :class:`agent.llava.chat_model.ChatLlava` at inference and by
``finetune`` at training, so a model is trained on exactly the prompts it later sees.

Steps, in order:

1. tool schemas, assistant ``tool_calls`` and ``tool`` turns are rewritten by
   :func:`agent.decoding.tool_protocol.to_template_turns` into plain system/user/assistant turns;
2. the image policy keeps the most recent ``max_images`` images as pixels and replaces older
   ones with a short text reference (``[earlier image: cat.jpg]``, worded by
   :func:`agent.core.images.earlier_image_reference`); how many images a model
   takes is read from its config (:func:`image_capacity`), never from its name;
3. a system turn is folded into the first user turn when the checkpoint's template has no
   system role;
4. the checkpoint's own chat template renders the text, and the number of image tokens in the
   text is checked against the number of images, so a mismatch never reaches the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.core.errors import InputError
from agent.core.images import earlier_image_reference
from agent.core.untrusted import neutraliser_for
from agent.decoding.tool_protocol import to_template_turns

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant", "tool")
DEFAULT_IMAGE_TOKEN = "<image>"
MULTI_IMAGE_DEFAULT = 8
"""Images kept as pixels by default for models trained on several images per conversation."""

# How many images a checkpoint was trained to see in one conversation, keyed by the config's
# (model_type, text_config.model_type); a None text type matches any language model.
# llava-1.5 (llava + llama) saw one image; llava-interleave (llava + qwen2) and
# llava-onevision were trained on interleaved multi-image data; llava-next (1.6) on one.
IMAGE_CAPACITY: dict[tuple[str, str | None], int] = {
    ("llava", "llama"): 1,
    ("llava", "mistral"): 1,
    ("llava", "vicuna"): 1,
    ("llava", "qwen2"): MULTI_IMAGE_DEFAULT,
    ("llava_onevision", None): MULTI_IMAGE_DEFAULT,
    ("llava_next", None): 1,
    ("llava_next_video", None): 1,
}
UNKNOWN_MODEL_IMAGE_CAPACITY = 1
"""Unknown combinations get one image: the safe choice for any LLaVA-family checkpoint."""


def register_image_capacity(model_type: str, text_model_type: str | None, max_images: int) -> None:
    """Declare how many images a (model_type, text model_type) combination handles."""
    if max_images < 0:
        raise InputError(f"max_images must be >= 0, got {max_images}")
    IMAGE_CAPACITY[(model_type, text_model_type)] = max_images


def image_capacity(config: Any) -> int:
    """How many images a model takes as pixels per prompt, read from its config.

    ``config`` is a transformers ``PretrainedConfig`` (or a plain dict of one). The answer comes
    from ``model_type`` plus ``text_config.model_type`` (see :data:`IMAGE_CAPACITY`).
    """
    model_type, text_type = _config_types(config)
    for key in ((model_type, text_type), (model_type, None)):
        if key in IMAGE_CAPACITY:
            return IMAGE_CAPACITY[key]
    logger.debug("No image policy for %s/%s; allowing one image", model_type, text_type)
    return UNKNOWN_MODEL_IMAGE_CAPACITY


def _config_types(config: Any) -> tuple[str | None, str | None]:
    if isinstance(config, Mapping):
        text = config.get("text_config") or {}
        return config.get("model_type"), (text.get("model_type") if isinstance(text, Mapping) else None)
    text_config = getattr(config, "text_config", None)
    return getattr(config, "model_type", None), getattr(text_config, "model_type", None)


@dataclass
class RenderedPrompt:
    """A prompt ready for the processor: its text and the images its image tokens stand for."""

    text: str
    images: list[Image.Image] = field(default_factory=list)
    image_token: str = DEFAULT_IMAGE_TOKEN
    max_images: int = 1
    dropped_images: int = 0
    """Older images replaced by a text reference because of the image policy."""

    def encode(self, processor: Any, *, return_tensors: str = "pt", **kwargs: Any) -> Any:
        """Run the processor on this prompt (text plus images) and return its ``BatchFeature``."""
        return processor(
            text=[self.text], images=self.images or None, return_tensors=return_tensors, **kwargs
        )


def render_prompt(
    processor: Any,
    turns: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    max_images: int | None = None,
    config: Any = None,
) -> RenderedPrompt:
    """Render HF-style chat ``turns`` with the checkpoint's own template.

    ``tools`` are OpenAI-format tool schemas shown to the model in the system turn.
    ``max_images`` overrides the model's image capacity (``0`` keeps none as pixels).
    ``config`` is the model config used for the image policy; by default it is taken from
    ``processor.model_config`` if set, else one image is kept.
    """
    _validate_turns(turns)
    image_token = getattr(processor, "image_token", None) or DEFAULT_IMAGE_TOKEN
    if max_images is None:
        model_config = config if config is not None else getattr(processor, "model_config", None)
        max_images = (
            image_capacity(model_config) if model_config is not None else UNKNOWN_MODEL_IMAGE_CAPACITY
        )
    if max_images < 0:
        raise InputError(f"max_images must be >= 0, got {max_images}")


    # Text never adds structure: no turn's text may spell a control token or role marker, and a
    # tool result may not spell the tool protocol's tags either (system text is the operator's).
    neutralisers = {
        "user": neutraliser_for(processor, protocol=False),
        "assistant": neutraliser_for(processor, protocol=False),
        "tool": neutraliser_for(processor, protocol=True),
    }
    prepared = [_normalise_turn(turn, image_token, neutralisers.get(turn["role"])) for turn in turns]
    if tools or any(t["role"] == "tool" or t.get("tool_calls") for t in prepared):
        prepared = [
            _normalise_turn(t, image_token) for t in to_template_turns(prepared, list(tools or []) or None)
        ]
    prepared, images, dropped = _apply_image_policy(prepared, max_images, neutralisers["tool"])
    if prepared and prepared[0]["role"] == "system" and not template_supports_system(processor):
        prepared = _fold_system_turn(prepared)
    template_turns = [
        {"role": t["role"], "content": [_template_block(b) for b in t["content"]]} for t in prepared
    ]
    try:
        text = processor.apply_chat_template(
            template_turns, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    except Exception as exc:  # template errors are jinja exceptions of many kinds
        raise InputError(
            f"the model's chat template cannot render this conversation ({type(exc).__name__}: {exc}); "
            "check the order of the roles (most templates want user/assistant alternating)"
        ) from exc
    found = text.count(image_token)
    if found != len(images):
        raise InputError(
            f"the rendered prompt holds {found} image token(s) {image_token!r} but {len(images)} image(s) "
            "were given; the chat template dropped or duplicated images (images in a system turn are not "
            "rendered by most templates): put images in user messages"
        )
    return RenderedPrompt(
        text=text, images=images, image_token=image_token, max_images=max_images, dropped_images=dropped
    )


def _validate_turns(turns: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(turns, (str, bytes)) or not isinstance(turns, Sequence):
        raise InputError(f"turns must be a list of chat turns, got {type(turns).__name__}")
    if not turns:
        raise InputError("the conversation is empty; pass at least one user turn")
    for index, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise InputError(
                f"turn {index} must be a dict with 'role' and 'content', got {type(turn).__name__}"
            )
        role = turn.get("role")
        if role not in ROLES:
            raise InputError(f"turn {index} has role {role!r}; use one of {', '.join(ROLES)}")
        content = turn.get("content")
        if content is None and not turn.get("tool_calls"):
            raise InputError(f"turn {index} ({role}) has no content")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise InputError(
                f"turn {index} ({role}) content must be a string or a list of blocks, got {type(content).__name__}"
            )


def _normalise_turn(
    turn: Mapping[str, Any], image_token: str, neutralise: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """Copy a turn with its content as a list of text/image blocks; literal image tokens neutralised.

    ``neutralise`` (see :mod:`agent.core.untrusted`) rewrites control tokens in the text; two adjacent
    text blocks whose joined text would spell a token are merged so the token cannot form at the seam.
    """
    content = turn.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        content = [{"type": "text", "text": content}] if content else []
    for block_index, block in enumerate(content or []):
        if isinstance(block, str):
            block = {"type": "text", "text": block}
        if not isinstance(block, Mapping) or block.get("type") not in ("text", "image"):
            kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
            raise InputError(
                f"{turn.get('role')} turn, block {block_index}: block type {kind!r} cannot be rendered; "
                "turns hold only text and image blocks (convert messages with agent.llava.messages first)"
            )
        if block["type"] == "text":
            text = str(block.get("text", ""))
            if image_token in text:
                # Typed text must never add an image slot without an image.
                logger.warning("Replacing literal %r in text with '[image]'", image_token)
                text = text.replace(image_token, "[image]")
            if neutralise is not None:
                previous = blocks[-1] if blocks and blocks[-1]["type"] == "text" else None
                if previous is not None and neutralise(previous["text"] + text) != previous["text"] + neutralise(text):
                    blocks[-1] = {**previous, "text": neutralise(previous["text"] + text)}
                    continue
                text = neutralise(text)
            blocks.append({**block, "text": text})
        else:
            if block.get("image") is None:
                raise InputError(
                    f"{turn.get('role')} turn, block {block_index}: image block has no 'image'; "
                    "load images with agent.core.images.load_image first"
                )
            blocks.append(dict(block))
    normalised = {key: value for key, value in turn.items() if key != "content"}
    normalised["content"] = blocks
    return normalised


def _apply_image_policy(
    turns: list[dict[str, Any]], max_images: int, neutralise: Callable[[str], str] = str
) -> tuple[list[dict[str, Any]], list[Image.Image], int]:
    positions = [
        (ti, bi) for ti, t in enumerate(turns) for bi, b in enumerate(t["content"]) if b["type"] == "image"
    ]
    keep = set(positions[max(0, len(positions) - max_images) :]) if max_images else set()
    images: list[Image.Image] = []
    dropped = 0
    out = []
    for ti, turn in enumerate(turns):
        blocks = []
        for bi, block in enumerate(turn["content"]):
            if block["type"] != "image":
                blocks.append(block)
            elif (ti, bi) in keep:
                images.append(block["image"])
                blocks.append(block)
            else:
                dropped += 1
                name = block.get("name") or getattr(block["image"], "filename", None) or None
                name = neutralise(name) if name else None  # a file name is untrusted
                blocks.append({"type": "text", "text": earlier_image_reference(name)})
        out.append({**turn, "content": blocks})
    if dropped:
        logger.debug(
            "Kept %d image(s) as pixels, replaced %d older one(s) by references", len(images), dropped
        )
    return out, images, dropped


_SYSTEM_PROBE = "\u2063system-probe\u2063"


_SYSTEM_SUPPORT: dict[str, bool] = {}


def template_supports_system(processor: Any) -> bool:
    """Whether the processor's chat template renders a system turn (probed once per template)."""
    key = repr(getattr(processor, "chat_template", None))
    cached = _SYSTEM_SUPPORT.get(key)
    if cached is not None:
        return cached
    probe = [
        {"role": "system", "content": [{"type": "text", "text": _SYSTEM_PROBE}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    try:
        rendered = processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
        supported = _SYSTEM_PROBE in rendered
    except Exception:  # templates raise on roles they do not know
        supported = False
    _SYSTEM_SUPPORT[key] = supported
    return supported


def _fold_system_turn(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system, rest = turns[0], turns[1:]
    system_text = "\n".join(b["text"] for b in system["content"] if b["type"] == "text").strip()
    for index, turn in enumerate(rest):
        if turn["role"] == "user":
            prefix = {"type": "text", "text": system_text + "\n\n"}
            merged = _merge_text(prefix, turn["content"])
            return [*rest[:index], {**turn, "content": merged}, *rest[index + 1 :]]
    return [{"role": "user", "content": [{"type": "text", "text": system_text}]}, *rest]


def _merge_text(prefix: dict[str, Any], blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            return [*blocks[:index], {**block, "text": prefix["text"] + block["text"]}, *blocks[index + 1 :]]
    return [*blocks, {"type": "text", "text": prefix["text"].rstrip()}]


def _template_block(block: Mapping[str, Any]) -> dict[str, Any]:
    # Templates only read the block type and text; pixels go to the processor separately.
    if block["type"] == "image":
        return {"type": "image"}
    return {"type": "text", "text": block["text"]}
