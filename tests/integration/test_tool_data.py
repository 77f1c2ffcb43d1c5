"""Tool-use training data synthesised from the tools: kinds, arguments, and prompts identical to inference."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from PIL import Image

from agent.app.routing_eval import agent_tools
from agent.app.system_prompt import build_system_prompt
from agent.app.tool_data import _Synthesizer, default_lexicons, synthesize_tool_data, vary_phrasing
from agent.core.config import load_config
from agent.core.errors import InputError
from agent.decoding.tool_protocol import parse_tool_calls
from agent.llava.messages import tool_schemas
from agent.llava.prompting import render_prompt
from finetune.formats import iter_samples, read_records, to_chat_turns

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    return agent_tools(load_config({"data_dir": str(tmp_path_factory.mktemp("data"))}))


@pytest.fixture(scope="module")
def dataset(tools, tmp_path_factory):
    return synthesize_tool_data(tools, tmp_path_factory.mktemp("tool-data"), count=300, seed=3)


def test_rows_cover_every_tool_and_the_no_tool_kinds(dataset, tools):
    kinds = Counter(row["kind"] for row in dataset.rows)
    assert len(dataset.rows) == 300
    assert {"call", "result", "result_error", "plain", "trap", "unsupported", "clarify", "attached_chat"} <= set(kinds)
    assert 0.25 <= dataset.summary["no_tool_share"] <= 0.45
    assert set(dataset.summary["tools"]) == {t.name for t in tools}
    assert dataset.summary["with_image"] > 0
    assert json.loads((dataset.image_folder / "data_summary.json").read_text()) == dataset.summary


def test_calls_are_valid_for_their_tools_schema(dataset, tools):
    schemas = {s["function"]["name"]: s["function"]["parameters"] for s in tool_schemas(tools)}
    calls = 0
    for row in dataset.rows:
        for message in row["messages"]:
            if message["role"] != "assistant" or "<tool_call>" not in message["content"]:
                continue
            _, parsed = parse_tool_calls(message["content"])
            (call,) = parsed
            assert call["name"] == row["tool"]
            properties = schemas[call["name"]]["properties"]
            assert set(schemas[call["name"]].get("required", [])) <= set(call["args"])
            assert list(call["args"]) == [name for name in properties if name in call["args"]]  # schema order
            calls += 1
        if row["kind"] in ("plain", "trap", "unsupported", "clarify", "attached_chat"):
            assert "<tool_call>" not in row["messages"][-1]["content"]
    assert calls > 150


def test_slot_values_are_copied_into_arguments(dataset):
    for row in dataset.rows:
        if row["kind"] != "call" or row["tool"] != "speak":
            continue
        request = row["messages"][1]["content"]
        _, (call,) = parse_tool_calls(row["messages"][2]["content"])
        assert call["args"]["text"] in request


def test_attached_image_rows_pass_the_attachment_path(dataset):
    attached = [row for row in dataset.rows if row["images"] and row["tool"] == "caption_image" and row["kind"] == "call"]
    assert attached
    for row in attached:
        user = row["messages"][1]["content"]
        assert user.startswith("<image>\n") and "[attached image: " in user
        path = user.split("[attached image: ")[1].rstrip("]")
        _, (call,) = parse_tool_calls(row["messages"][2]["content"])
        assert call["args"]["image"] == path
        assert (dataset.image_folder / row["images"][0]).is_file()


def test_training_prompts_are_exactly_what_inference_renders(tools, tiny_llava_qwen2, tmp_path):
    """Each row, read back by finetune, renders to the text ChatLlava renders for the same conversation."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_qwen2)
    rng = random.Random(0)
    picture = tmp_path / "p.png"
    Image.new("RGB", (20, 20), "red").save(picture)
    system = build_system_prompt(tools)
    synth = _Synthesizer(tools, system, default_lexicons(), rng, [str(picture)])
    schemas = tool_schemas(tools)
    for index, kind in enumerate(["call"] * 12 + ["result"] * 6 + ["attached_chat", "plain", "clarify"]):
        raw = synth.row(kind)
        row = synth.render(raw, index, "")
        # inference: the agent's turns with tools bound (images as pictures)
        pictures = {p: Image.open(p).convert("RGB") for p in raw["images"]}
        turns = [{"role": "system", "content": system}]
        for turn in raw["turns"]:
            content = turn["content"]
            if isinstance(content, list):
                content = [{**b, "image": pictures[b["image"]]} if b["type"] == "image" else b for b in content]
            turns.append({**turn, "content": content})
        expected = render_prompt(processor, turns, tools=schemas, add_generation_prompt=False, max_images=8).text
        # training: the JSONL row as finetune reads it
        path = tmp_path / f"row{index}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        records, _ = read_records(path)
        ((_, sample),) = list(iter_samples(records, "messages"))
        chat = to_chat_turns(sample, [pictures[p] for p in raw["images"]])
        assert render_prompt(processor, chat, add_generation_prompt=False, max_images=8).text == expected, row["id"]


def test_phrasing_varies_but_keeps_values():
    rng = random.Random(1)
    lexicons = default_lexicons()
    seen = {vary_phrasing("Read this aloud: dinner is served", rng, lexicons, ["dinner is served"]) for _ in range(60)}
    assert len(seen) > 10
    assert all("dinner is served" in text.lower() for text in seen)


def test_tools_without_examples_are_refused(tmp_path):
    from langchain_core.tools import StructuredTool

    def ping(host: str) -> str:
        """Ping a host."""
        return "ok"

    with pytest.raises(InputError, match="declares example requests"):
        synthesize_tool_data([StructuredTool.from_function(ping)], tmp_path, count=5)
    with pytest.raises(InputError, match="count must be at least 1"):
        synthesize_tool_data([], tmp_path, count=0)


def test_the_same_seed_gives_the_same_rows_in_any_process(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import sys; from agent.core.config import load_config; from agent.app.routing_eval import agent_tools; "
        "from agent.app.tool_data import synthesize_tool_data; "
        "synthesize_tool_data(agent_tools(load_config({'data_dir': sys.argv[2]})), sys.argv[1], count=60, seed=5)"
    )
    texts = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"run{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "d")], check=True, env=env)
        texts.append((out / "train.jsonl").read_text())
    assert texts[0] == texts[1]
