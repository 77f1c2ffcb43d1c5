"""End to end: tiny random ChatLlava + tiny tool models + real espeak-ng, through the agent and the CLI.

A random model rarely calls a tool by itself, so calls are forced with ``agent.tool_choice``
(constrained decoding then writes a schema-valid call, and the schema lets through only values
the tool accepts: its voices are an enum) or scripted; assertions are on files and invariants,
never on what the random model says. Runs are deterministic: greedy decoding with a fixed seed,
and fixed prompts -- the attached image is named in the prompt by its path, so the data folder
is at the same path on every run (``fixed_workdir``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, ToolMessage

from agent.app.multimodal_agent import (
    AgentReply,
    MultimodalAgent,
    ReplyEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from agent.core.config import load_config
from tests.scripted_chat_model import ScriptedChatModel, tool_call

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def agent_settings(data_dir: Path, model: Path, tool_models: dict[str, Path], **agent: object) -> dict:
    return {
        "data_dir": str(data_dir),
        "model": {"model": str(model), "max_new_tokens": 96, "temperature": 0.0, "seed": 0, "device": "cpu"},
        "tools": {
            "device": "cpu",
            "caption_model": str(tool_models["blip"]),
            "image_model": str(tool_models["stable_diffusion"]),
            "clip_model": str(tool_models["clip"]),
            "allowed_dirs": [str(data_dir), str(data_dir.parent)],
        },
        "agent": {"long_term_memory": False, "recursion_limit": 4, **agent},
    }


@pytest.fixture
def red_square(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "red.png"
    Image.new("RGB", (48, 48), (220, 20, 20)).save(path)
    return path


def voice_choices(agent: MultimodalAgent) -> list[str]:
    [speak] = [t for t in agent.tools if t.name == "speak"]
    options = speak.tool_call_schema.model_json_schema()["properties"]["voice"]["anyOf"]
    return next(o["enum"] for o in options if "enum" in o)


def assert_well_formed(agent: MultimodalAgent, thread_id: str) -> None:
    history = agent.history(thread_id)
    answered = {m.tool_call_id for m in history if isinstance(m, ToolMessage)}
    asked = {c["id"] for m in history if isinstance(m, AIMessage) for c in m.tool_calls}
    assert asked <= answered
    assert isinstance(history[-1], AIMessage) and not history[-1].tool_calls


def test_tiny_llava_calls_speak_and_returns_the_audio(fixed_workdir, tiny_llava_qwen2, tool_model_paths, red_square):
    settings = agent_settings(fixed_workdir / "data", tiny_llava_qwen2, tool_model_paths, tool_choice="speak")
    # one tool: the tiny tokenizer spends hundreds of tokens per tool schema of the tiny model's 2048
    settings["tools"]["enabled"] = ["speak"]
    agent = MultimodalAgent.from_config(load_config(settings, environ={}))
    assert [t.name for t in agent.tools] == ["speak"]
    events = list(agent.stream("Read this aloud, please.", images=[red_square]))
    reply = events[-1].reply
    assert isinstance(events[-1], ReplyEvent) and isinstance(reply, AgentReply)
    first_call = next(e for e in events if isinstance(e, ToolCallEvent))
    assert first_call.name == "speak" and first_call.args["text"].strip()
    assert first_call.args.get("voice") in (None, *voice_choices(agent))
    assert reply.tool_calls[0]["name"] == "speak"
    result = next(e for e in events if isinstance(e, ToolResultEvent) and e.call_id == first_call.call_id)
    assert reply.tool_calls[0]["status"] == "success", result.content
    wav = Path(result.artifact["path"])
    assert wav.parent == agent.config.artifacts_dir and wav.read_bytes()[:4] == b"RIFF"
    assert {"tool": "speak", **result.artifact} in reply.artifacts
    with wave.open(str(wav)) as reader:
        assert reader.getnframes() / reader.getframerate() == pytest.approx(result.artifact["duration_s"], abs=0.002)
    # what the model writes after the tool result depends on the result's text (a time-stamped file
    # name), so only invariants are checked past this point: the stored thread ends with the reply
    assert reply.text == agent.history(reply.thread_id)[-1].text.strip()
    assert all(e.text for e in events if isinstance(e, TokenEvent))
    assert_well_formed(agent, reply.thread_id)


def test_real_tools_in_one_turn_return_their_artifacts(tmp_path, tool_model_paths, red_square):
    """A scripted model drives all four real tools (tiny checkpoints, real espeak-ng) in one turn."""
    from PIL import Image

    from memory.chroma import release_writer_lock
    from memory.image_index import index_images

    data_dir = tmp_path / "data"
    settings = agent_settings(data_dir, Path("/unused"), tool_model_paths)
    album = tmp_path / "album"
    album.mkdir()
    Image.new("RGB", (48, 48), (20, 20, 220)).save(album / "blue.png")
    Image.new("RGB", (48, 48), (220, 20, 20)).save(album / "red.png")
    config = load_config(settings, environ={})
    assert index_images(album, config, progress=False).added == 2
    release_writer_lock(config.chroma_dir)
    calls = [
        tool_call("generate_image", {"prompt": "a red boat", "width": 64, "height": 64, "steps": 1, "seed": 3}, "g"),
        tool_call("caption_image", {"image": str(red_square)}, "c"),
        tool_call("speak", {"text": "Hello there."}, "s"),
        tool_call("search_images", {"query": "a boat", "k": 2}, "q"),
    ]
    model = ScriptedChatModel(replies=[AIMessage("", tool_calls=calls), "All done."])
    agent = MultimodalAgent(model, config=config)
    reply = agent.chat("make, describe, say and search")
    assert reply.text == "All done."
    statuses = {c["name"]: c["status"] for c in reply.tool_calls}
    assert statuses == dict.fromkeys(["generate_image", "caption_image", "speak", "search_images"], "success")
    by_tool = {a["tool"]: a for a in reply.artifacts}
    with Image.open(by_tool["generate_image"]["path"]) as image:
        assert image.size == (64, 64)
    assert by_tool["caption_image"]["image"] == str(red_square.resolve())
    assert Path(by_tool["speak"]["path"]).read_bytes()[:4] == b"RIFF"
    hits = by_tool["search_images"]["results"]
    assert sorted(h["path"] for h in hits) == sorted(str(p) for p in album.resolve().iterdir())
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    # the caption is now known for the image, so the context policy can name it later
    from agent.app.context import collect_captions

    captions = collect_captions(agent.history(reply.thread_id))
    assert captions[str(red_square.resolve())] == by_tool["caption_image"]["caption"]


def test_cli_ask_end_to_end(tmp_path, fixed_workdir, tiny_llava_qwen2, tool_model_paths, red_square, monkeypatch,
                            capsys):
    data_dir = fixed_workdir / "data"
    settings = agent_settings(data_dir, tiny_llava_qwen2, tool_model_paths, tool_choice="speak")
    settings["tools"]["enabled"] = ["speak"]
    from agent.core.config import config_to_toml

    config_path = tmp_path / "config.toml"
    config_path.write_text(config_to_toml(load_config(settings, environ={})))
    env = {**os.environ, "LLAVA_AGENT_DATA_DIR": str(data_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "agent.cli.main", "--config", str(config_path), "ask", "Say hello.", "--image",
         str(red_square), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(payload) == {"text", "thread_id", "tool_calls", "artifacts", "stopped", "limit_reached"}
    assert payload["tool_calls"][0]["name"] == "speak" and payload["tool_calls"][0]["status"] == "success"
    wav = Path(payload["artifacts"][0]["path"])
    assert wav.is_file() and wav.read_bytes()[:4] == b"RIFF"
    monkeypatch.setenv("LLAVA_AGENT_DATA_DIR", str(data_dir))
    from agent.cli.main import main

    assert main(["--config", str(config_path), "threads", "show", payload["thread_id"]]) == 0
    assert "human: Say hello." in capsys.readouterr().out


def test_a_thread_in_chinese_keeps_fitting_the_context(tmp_path, tiny_llava_qwen2, tool_model_paths):
    """Text the tiny tokenizer spends about three tokens a character on: counted with the model's tokenizer."""
    settings = agent_settings(tmp_path / "data", tiny_llava_qwen2, tool_model_paths)
    settings["tools"]["enabled"] = []
    settings["agent"]["routing"] = "model"
    settings["model"]["max_new_tokens"] = 16
    agent = MultimodalAgent.from_config(load_config(settings, environ={}))
    message = "请描述一下这张图片里的颜色和形状，" * 8  # 136 characters
    tokens = agent.model.get_num_tokens(message)
    assert tokens == len(agent.model.loaded.tokenizer.encode(message, add_special_tokens=False)) > 300
    thread = None
    for index in range(4):  # together far over the 2,048-token context
        thread = agent.chat(f"{index}: {message}", thread_id=thread).thread_id
    history = agent.history(thread)
    assert len(history) == 8 and [m.text[:2] for m in history[::2]] == ["0:", "1:", "2:", "3:"]
