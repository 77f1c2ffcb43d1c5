"""Tool-use training data synthesised from the tools themselves: no external model, no downloads.

:func:`synthesize_tool_data` writes conversations that teach a model *when* to call which tool
and *how* to fill its arguments, built only from what the enabled tools declare -- their schemas,
descriptions and example requests (:mod:`tools.examples`) -- and the lexicons in
``agent/data/tool_lexicons.json`` (paths in every style, picture subjects and styles, search
queries, sentences to speak, facts to remember, plain questions with answers). Row kinds:

* ``call``: a request, the assistant's tool call (slots filled, phrasing varied: politeness,
  casing, typos; an attached image where the example says ``{attached}``);
* ``plain``, ``trap``, ``unsupported``, ``clarify``, ``attached_chat``: no tool -- knowledge
  questions and chit-chat answered in words; lexical traps ("I remember when...", "say what you
  think"); requests no tool can do, answered in words; a request missing a required argument,
  answered with a clarifying question; an attached image that needs no tool;
* ``result``: a call, the tool's result (a success, or an error the model must recover from),
  then a plain-words answer.

Every row is rendered with the agent's own system prompt and tool list through
:func:`agent.decoding.tool_protocol.to_template_turns`, the step :func:`agent.llava.prompting.render_prompt`
applies at inference, and written as ``messages`` JSONL (the format ``finetune train`` reads):
a system turn, user turns (``<image>`` where an image is attached; tool results as
``<tool_response>`` blocks) and assistant turns (text or ``<tool_call>`` blocks). Inspect it,
edit it, train on it.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.errors import ConfigError, InputError

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

    from agent.core.config import AppConfig
    from tools.examples import ToolExample

logger = logging.getLogger(__name__)

LEXICONS_FILE = "tool_lexicons.json"
TRAIN_FILE = "train.jsonl"
IMAGE_PLACEHOLDER = "<image>"
ATTACHMENT_ROOTS = (
    "/home/{user}/.local/share/llava-agent/attachments",
    "/tmp/llava-agent-{token}/data/attachments",
    "/Users/{user}/Library/Application Support/llava-agent/attachments",
    "C:\\Users\\{user}\\AppData\\Local\\llava-agent\\attachments",
    "/srv/llava/data/attachments",
)
USERS = ("sam", "mei", "jo", "ana", "li", "omar", "kate", "ravi")
KIND_SHARES = {
    "call": 0.52,
    "result": 0.14,
    "plain": 0.16,
    "trap": 0.07,
    "unsupported": 0.04,
    "clarify": 0.04,
    "attached_chat": 0.03,
}
"""Share of each row kind (no-tool rows: about a third)."""
LEXICON_OF_KIND = {"plain": "plain", "trap": "traps", "unsupported": "unsupported"}


def default_lexicons() -> dict[str, Any]:
    """The shipped lexicons (``agent/data/tool_lexicons.json``)."""
    from importlib.resources import files

    return json.loads((files("agent") / "data" / LEXICONS_FILE).read_text(encoding="utf-8"))


@dataclass
class ToolDataset:
    """A synthesised training set on disk."""

    path: Path
    """The ``messages`` JSONL file."""
    image_folder: Path
    """Folder the rows' image paths are relative to."""
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


# ----- filling slots and varying phrasing -------------------------------------------------------


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def vary_phrasing(text: str, rng: random.Random, lexicons: Mapping[str, Any], protected: Sequence[str] = ()) -> str:
    """Politeness, casing, punctuation and an occasional typo -- never inside ``protected`` values."""
    prefix = rng.choice(lexicons.get("prefix") or [""])
    suffix = rng.choice(lexicons.get("suffix") or [""])
    body = text
    if prefix and body[:1].isupper() and not body.startswith("I "):
        body = body[0].lower() + body[1:]
    if suffix and body[-1:] in ".?!":
        ending, body = body[-1], body[:-1]
        suffix = suffix + ("" if suffix.endswith(("!", ")")) else ending if ending == "?" else "")
    result = prefix + body + suffix
    roll = rng.random()
    if roll < 0.15:  # all lower case, except the values the call must copy as written
        lowered = result.lower()
        for value in protected:
            if value and value.lower() != value:
                lowered = lowered.replace(value.lower(), value)
        result = lowered
    elif roll < 0.25:
        result = result.rstrip(".?!")
    if rng.random() < 0.12:  # one typo in a word the user typed, not in a value that must be copied
        words = result.split(" ")
        candidates = [i for i, w in enumerate(words) if not any(w and w in value for value in protected)]
        if candidates:
            i = rng.choice(candidates)
            words[i] = _typo(words[i], rng)
            result = " ".join(words)
    return result


def _fill(template: str, values: Mapping[str, Any]) -> str:
    return re.sub(r"\{([a-z_][a-z0-9_]*)\}", lambda m: str(values[m.group(1)]), template)


def _argument(template: Any, values: Mapping[str, Any]) -> Any:
    if not isinstance(template, str):
        return template
    whole = re.fullmatch(r"\{([a-z_][a-z0-9_]*)\}", template)
    if whole:
        return values[whole.group(1)]  # keeps the slot value's type (a count stays an int)
    return _fill(template, values)


def _schema_order(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments in the order of the tool's schema (the order constrained decoding writes them in)."""
    order = list((schema.get("function", schema).get("parameters") or {}).get("properties", {}))
    ranked = sorted(arguments, key=lambda name: order.index(name) if name in order else len(order))
    return {name: arguments[name] for name in ranked}


def _attachment_path(rng: random.Random, name: str) -> str:
    root = rng.choice(ATTACHMENT_ROOTS).format(user=rng.choice(USERS), token=f"{rng.getrandbits(32):08x}")
    separator = "\\" if root.startswith("C:") else "/"
    return f"{root}{separator}{rng.getrandbits(48):012x}-{name}"


# ----- one row per kind -------------------------------------------------------------------------


class _Synthesizer:
    def __init__(self, tools: Sequence[BaseTool], system_prompt: str, lexicons: Mapping[str, Any],
                 rng: random.Random, images: Sequence[str]) -> None:
        from agent.llava.messages import tool_schemas
        from tools.examples import tool_examples

        self.tools = list(tools)
        self.schemas = {s["function"]["name"]: s for s in tool_schemas(self.tools)}
        self.system_prompt = system_prompt
        self.lexicons = lexicons
        self.rng = rng
        self.images = list(images)
        self.examples = {t.name: tool_examples(t) for t in self.tools}
        self.names = [t.name for t in self.tools]
        self.callable = [name for name in self.names if self.examples[name]]
        if not self.callable:
            raise InputError(
                f"none of the tools ({', '.join(self.names) or 'none'}) declares example requests; declare them with "
                "register_tool(name, factory, examples=[...]) or tool.metadata['examples']"
            )

    # -- helpers --
    def slot_values(self, example: ToolExample) -> dict[str, Any]:
        values: dict[str, Any] = {}
        slots = set(example.request_slots)
        for value in example.arguments.values():
            if isinstance(value, str):
                slots |= set(re.findall(r"\{([a-z_][a-z0-9_]*)\}", value))
        slots.discard("attached")
        # facts and topics are paired: a recall of topic i finds fact i
        pair = self.rng.randrange(min(len(self.lexicons.get("fact", [])), len(self.lexicons.get("topic", []))) or 1)
        for slot in sorted(slots):
            choices = example.slots.get(slot) or self.lexicons.get(slot)
            if not choices:
                raise InputError(
                    f"example {example.request!r} uses slot {{{slot}}} but no lexicon gives values for it; add "
                    f"slots={{'{slot}': [...]}} to the example or a '{slot}' list to the lexicons"
                )
            values[slot] = choices[pair] if slot in ("fact", "topic") and not example.slots.get(slot) else self.rng.choice(choices)
        return values

    def user_turn(self, text: str, image: str | None) -> tuple[dict[str, Any], list[str], str | None]:
        """A user turn; with ``image`` an attachment line and an image block, as the agent builds them."""
        if image is None:
            return {"role": "user", "content": text}, [], None
        path = _attachment_path(self.rng, Path(image).name)
        content = [{"type": "text", "text": f"{text}\n[attached image: {path}]"}, {"type": "image", "image": image}]
        return {"role": "user", "content": content}, [image], path

    def call(self, name: str) -> tuple[list[dict[str, Any]], list[str], dict[str, Any], dict[str, Any]]:
        number = self.rng.randrange(len(self.examples[name]))
        example = self.examples[name][number]
        self.last_group = f"{name}:{number}"
        values = self.slot_values(example)
        image = self.rng.choice(self.images) if example.attaches_image else None
        request = vary_phrasing(_fill(example.request, values), self.rng, self.lexicons,
                                [str(v) for v in values.values()])
        user, images, attached = self.user_turn(request, image)
        if attached is not None:
            values["attached"] = attached
        arguments = _schema_order({k: _argument(v, values) for k, v in example.arguments.items()}, self.schemas[name])
        assistant = {"role": "assistant", "content": "", "tool_calls": [{"name": name, "arguments": arguments}]}
        return [user, assistant], images, arguments, values

    # -- kinds --
    def row(self, kind: str) -> dict[str, Any]:
        self.last_group: str | None = None
        tool: str | None = None
        images: list[str] = []
        if kind == "call":
            tool = self.callable[self._next_tool()]
            turns, images, _, _ = self.call(tool)
        elif kind == "result":
            tool = self.callable[self._next_tool()]
            turns, images, arguments, values = self.call(tool)
            failed = self.rng.random() < 0.3
            result, answer = self.outcome(tool, arguments, values, failed)
            turns += [{"role": "tool", "content": result, "name": tool}, {"role": "assistant", "content": answer}]
            kind = "result_error" if failed else "result"
        elif kind == "clarify":
            options = [c for c in self.lexicons.get("clarify", []) if c[0] in self.names]
            if not options:
                return self.row("plain")
            _, question, answer = self.rng.choice(options)
            turns = [{"role": "user", "content": vary_phrasing(question, self.rng, self.lexicons)},
                     {"role": "assistant", "content": answer}]
        elif kind == "attached_chat":
            question, answer = self.rng.choice(self.lexicons["attachment_chat"])
            user, images, _ = self.user_turn(vary_phrasing(question, self.rng, self.lexicons), self.rng.choice(self.images))
            turns = [user, {"role": "assistant", "content": answer}]
        else:
            options = self.lexicons[LEXICON_OF_KIND[kind]]
            number = self.rng.randrange(len(options))
            self.last_group = f"{kind}:{number}"
            question, answer = options[number]
            turns = [{"role": "user", "content": vary_phrasing(question, self.rng, self.lexicons)},
                     {"role": "assistant", "content": answer}]
        return {"kind": kind, "tool": tool, "turns": turns, "images": images, "group": self.last_group}

    def _next_tool(self) -> int:
        self._tool_counter = getattr(self, "_tool_counter", -1) + 1
        return self._tool_counter % len(self.callable)

    def outcome(self, tool: str, arguments: Mapping[str, Any], values: Mapping[str, Any], failed: bool) -> tuple[str, str]:
        """The tool's result text (like the real tool's) and the plain-words answer that follows it."""
        rng = self.rng
        if failed:
            template = self.lexicons.get("result_errors", {}).get(tool, f"Error running {tool}: it failed. Please try again or use another tool.")
            result = template.format(**{k: v for k, v in arguments.items()}) if "{" in template else template
            answers = {
                "caption_image": f"I couldn't open {arguments.get('image')}: that file doesn't exist. Could you check the path or attach the picture?",
                "generate_image": "Sorry, I couldn't create the picture: the image model isn't available right now.",
                "search_images": "You haven't indexed any pictures yet. Index a folder first (llava-agent index FOLDER), then ask me again.",
                "speak": "I couldn't read it aloud: the speech engine espeak-ng isn't installed on this computer.",
                "describe_video": f"I couldn't open {arguments.get('video')}: that file doesn't exist. Could you check the path?",
                "remember": "I couldn't save that right now because the memory store is unavailable. Please try again later.",
                "recall": f"I don't have anything saved about {values.get('topic', 'that')} yet.",
            }
            return result, answers.get(tool, f"Sorry, {tool} didn't work this time.")
        slug = "-".join(re.findall(r"[a-z0-9]+", str(arguments.get("prompt", "image")).lower())[:4]) or "image"
        artifacts = f"/home/{rng.choice(USERS)}/.local/share/llava-agent/artifacts"
        if tool == "caption_image":
            caption = rng.choice(self.lexicons["subject"])
            return (f"Caption of {arguments['image']}: {caption}", f"The picture shows {caption}.")
        if tool == "generate_image":
            path = f"{artifacts}/{slug}-{rng.randrange(1, 40)}.png"
            return (f"Saved the generated image to {path} (seed {rng.randrange(10**6)}).",
                    f"Here is your picture: {path}")
        if tool == "search_images":
            found = rng.sample(self.lexicons["image"], 2)
            lines = "\n".join(f"{n}. {p} (similarity {0.33 - 0.02 * n:.3f})" for n, p in enumerate(found, 1))
            return (f"Found 2 image(s) for {arguments['query']!r}:\n{lines}",
                    "I found 2 matching pictures:\n" + "\n".join(f"- {p}" for p in found))
        if tool == "speak":
            path = f"{artifacts}/speech-{rng.randrange(1, 40)}.wav"
            return (f"Saved {rng.uniform(1, 4):.1f} s of speech to {path}.", f"Done - I said it aloud and saved the audio to {path}.")
        if tool == "describe_video":
            scene = rng.choice(self.lexicons["subject"])
            return (f"Video {arguments['video']} (12.0 s, 6 keyframes): {scene}, seen from several angles.",
                    f"The video shows {scene}.")
        if tool in ("generate_video", "generate_3d"):
            suffix = ".mp4" if tool == "generate_video" else ".glb"
            path = f"{artifacts}/{slug}-{rng.randrange(1, 40)}{suffix}"
            return (f"Saved the generated {'video' if tool == 'generate_video' else '3D model'} to {path}.",
                    f"Here it is: {path}")
        if tool == "remember":
            return (f"Remembered: {arguments['fact']}", f"Got it, I'll remember that {arguments['fact']}.")
        if tool == "recall":
            fact = values.get("fact") or self.lexicons["fact"][self.lexicons["topic"].index(values["topic"])]
            return (f"- {fact}", f"You told me that {fact}.")
        return (f"{tool} finished.", "Done.")

    # -- rendering --
    def render(self, row: dict[str, Any], index: int, image_prefix: str) -> dict[str, Any]:
        """The row as ``messages`` JSONL: turns rewritten exactly as the prompt renderer does."""
        from agent.decoding.tool_protocol import to_template_turns

        schemas = [self.schemas[name] for name in self.names]
        turns = [{"role": "system", "content": self.system_prompt}, *row["turns"]]
        messages = []
        for turn in to_template_turns(turns, schemas):
            parts = [IMAGE_PLACEHOLDER if b["type"] == "image" else b["text"] for b in turn["content"]]
            images = [p for p in parts if p == IMAGE_PLACEHOLDER]
            text = "".join(p for p in parts if p != IMAGE_PLACEHOLDER)
            # the template renders a turn's images before its text, one "<image>\n" each
            messages.append({"role": turn["role"], "content": "".join(f"{p}\n" for p in images) + text})
        name = row["tool"] or "none"
        return {
            "id": f"{row['kind']}-{name}-{index:04d}",
            "kind": row["kind"],
            "tool": row["tool"],
            "messages": messages,
            "images": [f"{image_prefix}{Path(p).name}" for p in row["images"]],
        }


def write_pictures(folder: Path, count: int, seed: int) -> list[Path]:
    """Small random pictures (shapes on a background) to attach in image rows."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = ("photo", "snapshot", "picture", "image", "scan", "screenshot", "holiday", "IMG_2041")
    paths = []
    for index in range(count):
        image = Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.randrange(48), rng.randrange(32)
            draw.ellipse([x, y, x + 16, y + 16], fill=tuple(rng.randrange(256) for _ in range(3)))
        path = folder / f"{names[index % len(names)]}-{index}.png"
        image.save(path)
        paths.append(path)
    return paths


def synthesize_tool_data(
    tools: Sequence[BaseTool],
    output_dir: str | Path,
    *,
    system_prompt: str | None = None,
    count: int = 600,
    seed: int = 0,
    lexicons: Mapping[str, Any] | None = None,
    shares: Mapping[str, float] | None = None,
    overwrite: bool = False,
) -> ToolDataset:
    """Write ``count`` training rows for ``tools`` into ``output_dir`` (``train.jsonl`` and ``images/``).

    Args:
        tools: the tools the agent binds, in the agent's order (their examples drive the data).
        system_prompt: the agent's system prompt; default :func:`agent.app.system_prompt.build_system_prompt`.
        count: rows to write.
        lexicons: slot values and conversation material; default the shipped lexicons.
        shares: share of each row kind (see :data:`KIND_SHARES`).
        overwrite: replace an existing ``train.jsonl`` (which may hold edits); without it one is refused.
    """
    from agent.app.system_prompt import build_system_prompt
    from agent.core.files import atomic_write_text

    if count < 1:
        raise InputError(f"count must be at least 1, got {count}")
    output_dir = Path(output_dir).expanduser()
    path = output_dir / TRAIN_FILE
    if path.exists() and not overwrite:  # checked before anything is written
        raise ConfigError(
            f"training data {path} already exists; pass --overwrite to replace it or choose another --output"
        )
    lexicons = lexicons or default_lexicons()
    shares = dict(shares or KIND_SHARES)
    unknown = sorted(set(shares) - set(KIND_SHARES))
    if unknown or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise InputError(f"shares must be non-negative weights of {', '.join(KIND_SHARES)}, got {shares}")
    rng = random.Random(seed)
    pictures = write_pictures(output_dir / "images", 8, seed)
    synth = _Synthesizer(tools, system_prompt or build_system_prompt(tools), lexicons, rng, [str(p) for p in pictures])
    total = sum(shares.values())
    kinds = [kind for kind, share in shares.items() for _ in range(round(count * share / total))]
    kinds = (kinds + ["call"] * count)[:count]
    rng.shuffle(kinds)
    rows = [synth.render(synth.row(kind), index, "images/") for index, kind in enumerate(kinds)]
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    summary = {
        "rows": len(rows),
        "kinds": dict(Counter(row["kind"] for row in rows)),
        "tools": dict(Counter(row["tool"] or "(none)" for row in rows if row["kind"] in ("call", "result", "result_error"))),
        "no_tool_share": round(sum(row["tool"] is None for row in rows) / len(rows), 3),
        "with_image": sum(bool(row["images"]) for row in rows),
        "seed": seed,
    }
    atomic_write_text(output_dir / "data_summary.json", json.dumps(summary, indent=2) + "\n")
    logger.info("Wrote %d tool-use rows to %s", len(rows), path)
    return ToolDataset(path, output_dir, rows, summary)


def agent_tool_list(config: AppConfig) -> list[BaseTool]:
    """The tools the configured agent binds, in its order (enabled tools, then remember/recall)."""
    from agent.app.routing_eval import agent_tools

    return agent_tools(config)
