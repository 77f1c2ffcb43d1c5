"""Tool routing on a real pretrained language model (SmolLM2-135M-Instruct in a LLaVA).

A CI-sized tool-use adapter is trained once with the product's recipe (synthesised data,
shared-prefix LoRA; tests/real_model.py caches it across sessions) and checked on a slice of the
held-out routing set; then the agent runs end to end with it, with the tiny tool checkpoints and
real espeak-ng. The vision tower is random: nothing here depends on what an image shows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.app.multimodal_agent import MultimodalAgent
from agent.app.routing_eval import evaluate_routing, load_routing_set
from agent.core.config import load_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLICE_EVERY = 6  # 26 of the 156 held-out requests, every tool and the no-tool kinds

# The CI-sized adapter (tests/real_model.py: 240 rows, 30 steps) with the default hybrid routing
# routes and fills arguments like the full recipe, but after a tool result it often echoes the
# protocol's framing and a paraphrase of the result instead of answering (the framing is dropped,
# the paraphrase stays: "The lighthouse at dusk was drawn by the agent."); the full recipe (1,600
# rows, 200 steps) names the picture and the WAV (README, "Tool routing"). Strict: a CI adapter
# that does better turns this into a failure until the mark is removed.
WEAK_CI_ANSWERS = pytest.mark.xfail(
    reason="the CI-sized tool adapter does not answer in words after a tool result", raises=AssertionError, strict=True
)


@pytest.fixture(scope="session")
def tool_adapter(smollm2_llava) -> Path:
    from tests.real_model import smollm2_tool_adapter_path

    return smollm2_tool_adapter_path(smollm2_llava)


def _settings(data_dir: Path, model: Path, adapter: Path | None, **extra: dict) -> dict:
    settings = {
        "data_dir": str(data_dir),
        "model": {"model": str(model), "adapter": str(adapter) if adapter else None, "quantization": "none",
                  "temperature": 0.0, "max_new_tokens": 160, "device": "cpu"},
        "agent": {"long_term_memory": True, "recursion_limit": 4},
    }
    for section, values in extra.items():
        settings[section] = {**settings.get(section, {}), **values}
    return settings


def test_adapter_routes_a_held_out_slice(smollm2_llava, tool_adapter, tmp_path):
    # CI-sized shape (measured on the slice with the default hybrid routing: routing 0.85, arguments
    # 0.94, false calls 3 of 7; without the router's prior routing 0.81; the model alone routes 0.27
    # of it). The full recipe's numbers on the whole held-out set are in the README.
    cases = load_routing_set()[::SLICE_EVERY]
    config = load_config(_settings(tmp_path, smollm2_llava, None), environ={})
    assert config.agent.routing == "hybrid"  # the default
    report = evaluate_routing(str(smollm2_llava), adapter=str(tool_adapter), cases=cases, config=config)
    print(report.render(show_errors=True))
    assert report.routing_accuracy >= 0.8
    assert report.argument_accuracy >= 0.85
    assert report.false_call_rate <= 4 / 7
    calls = {r.expected: r.called for r in report.results if r.expected is not None and r.routed_right}
    assert {"caption_image", "generate_image", "search_images", "speak"} <= set(calls)  # every tool reached


def test_plain_questions_are_still_answered_in_words(smollm2_llava, tool_adapter, tmp_path):
    config = load_config(_settings(tmp_path, smollm2_llava, tool_adapter), environ={})
    agent = MultimodalAgent.from_config(config)
    reply = agent.chat("What is the capital of Japan?")
    assert reply.tool_calls == []
    assert "Tokyo" in reply.text


@pytest.fixture
def agent_with_tools(smollm2_llava, tool_adapter, tool_model_paths, tmp_path):
    from PIL import Image

    from memory.image_index import ImageIndex

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (48, 48), (220, 20, 20)).save(photos / "red_square.png")
    settings = _settings(tmp_path / "data", smollm2_llava, tool_adapter, tools={
        "device": "cpu", "caption_model": str(tool_model_paths["blip"]),
        "image_model": str(tool_model_paths["stable_diffusion"]), "clip_model": str(tool_model_paths["clip"]),
        "allowed_dirs": [str(tmp_path)],
    })
    config = load_config(settings, environ={})
    ImageIndex.from_config(config).index_folder(photos)
    return MultimodalAgent.from_config(config)


def test_the_agent_uses_its_tools_end_to_end(agent_with_tools):
    agent = agent_with_tools
    drawn = agent.chat("draw a lighthouse at dusk")
    assert [c["name"] for c in drawn.tool_calls] == ["generate_image"]
    assert "lighthouse" in drawn.tool_calls[0]["args"]["prompt"].lower()
    png = next(a["path"] for a in drawn.artifacts if a["tool"] == "generate_image")
    assert Path(png).is_file() and Path(png).suffix == ".png"

    spoken = agent.chat("read this aloud: dinner is ready")
    assert [c["name"] for c in spoken.tool_calls] == ["speak"]
    assert re.sub(r"\W", "", spoken.tool_calls[0]["args"]["text"].lower()) == "dinnerisready"
    wav = next(a["path"] for a in spoken.artifacts if a["tool"] == "speak")
    assert Path(wav).read_bytes()[:4] == b"RIFF"

    found = agent.chat("find my photos of red squares")
    assert [c["name"] for c in found.tool_calls] == ["search_images"]
    assert any(hit["path"].endswith("red_square.png") for a in found.artifacts for hit in a["results"])

    plain = agent.chat("what is the capital of Japan?")
    assert plain.tool_calls == [] and "Tokyo" in plain.text
    # the replies after a tool are words, never the protocol's framing echoed back
    assert not [reply.text for reply in (drawn, spoken, found) if "tool_response" in reply.text]


@WEAK_CI_ANSWERS
def test_the_reply_after_a_tool_names_what_it_made(agent_with_tools):
    drawn = agent_with_tools.chat("draw a lighthouse at dusk")
    png = next(a["path"] for a in drawn.artifacts if a["tool"] == "generate_image")
    assert Path(png).name in drawn.text
    found = agent_with_tools.chat("find my photos of red squares")
    assert "red_square.png" in found.text


def test_terminal_chat_routes_a_request_to_its_tool(smollm2_llava, tool_adapter, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    import json
    import os
    import sys

    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "config.toml"
    # the default tools and memory: the prompt the adapter was trained on (only speak runs here)
    config.write_text(
        f'[model]\nmodel = "{smollm2_llava}"\nadapter = "{tool_adapter}"\nquantization = "none"\ntemperature = 0.0\n'
        '[agent]\nrecursion_limit = 4\n'
    )
    env = {**os.environ, "LLAVA_AGENT_DATA_DIR": str(tmp_path / "data"), "PROMPT_TOOLKIT_NO_CPR": "1",
           "TERM": "xterm", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    chat = pexpect.spawn(sys.executable, ["-m", "agent.cli", "--config", str(config), "chat"], cwd=str(root),
                         env=env, encoding="utf-8", timeout=240, dimensions=(50, 200))
    chat.expect("you>")
    chat.sendline("read this aloud: dinner is ready")
    chat.expect(r"\[tool\] (\w+) (\{[^\r\n]*\})")  # the prompt redraws "you>" as it echoes the line
    assert chat.match.group(1) == "speak"
    assert re.sub(r"\W", "", json.loads(chat.match.group(2))["text"].lower()) == "dinnerisready"
    chat.expect(r"\[tool done\] speak: Saved [0-9.]+ s of speech to (\S+\.wav)")
    assert Path(chat.match.group(1).rstrip(".")).is_file()
    chat.expect("you>")
    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
