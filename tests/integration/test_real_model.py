"""The SmolLM2-based LLaVA checkpoint: built from the real GGUF weights, loaded through ChatLlava's normal path."""

from __future__ import annotations

import base64
import io
import json

import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from agent import ChatLlava
from agent.llava.prompting import image_capacity

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def llm(smollm2_llava) -> ChatLlava:
    # 4-bit, as on CUDA and on CPUs where bitsandbytes' kernel is fast (elsewhere ``auto`` takes int8
    # weights or full precision, whichever this CPU decodes faster: the next test loads both)
    return ChatLlava(model=str(smollm2_llava), quantization="4bit", temperature=0, max_new_tokens=24, device="cpu")


def test_checkpoint_is_a_plain_llava_folder(smollm2_llava):
    config = json.loads((smollm2_llava / "config.json").read_text())
    assert config["model_type"] == "llava" and config["text_config"]["model_type"] == "llama"
    assert "quantization_config" not in config and "quantization_config" not in config["text_config"]
    assert config["text_config"]["max_position_embeddings"] == 8192
    assert config["text_config"]["vocab_size"] % 64 == 0
    info = json.loads((smollm2_llava / "real_model_info.json").read_text())
    assert "SmolLM2-135M-Instruct" in info["language_model"]


def test_real_language_model_answers_a_knowledge_question(llm):
    reply = llm.invoke("What is the capital of Japan?")
    assert "Tokyo" in reply.content
    assert llm.loaded.spec.quantization in ("4bit", "none")
    assert image_capacity(llm.loaded.config) == 1


@pytest.mark.parametrize("quantization", ["none", "int8-weights"])
def test_full_precision_and_int8_weight_loads_answer_too(smollm2_llava, quantization):
    llm = ChatLlava(model=str(smollm2_llava), quantization=quantization, temperature=0, max_new_tokens=16, device="cpu")
    assert llm.loaded.spec.quantization == quantization
    assert "Paris" in llm.invoke("What is the capital of France? Answer in one sentence.").content


def test_chat_template_renders_images_and_the_vision_path_runs(llm):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(buffer, "PNG")
    image = {"type": "image", "base64": base64.b64encode(buffer.getvalue()).decode(), "mime_type": "image/png"}
    reply = llm.invoke([HumanMessage(content=[{"type": "text", "text": "Describe this."}, image])])
    assert isinstance(reply.content, str)
    # 16 image tokens from the 32x32 vision tower, plus the text
    assert reply.usage_metadata["input_tokens"] > 16


def test_prompt_lookup_copies_the_request_in_fewer_passes_and_changes_nothing(llm):
    """Inside a call the words copied from the request are drafted and checked several per pass."""
    from tools.caption import CaptionImageTool
    from tools.generate import GenerateImageTool
    from tools.search import SearchImagesTool
    from tools.speak import SpeakTool

    tools = [CaptionImageTool(), GenerateImageTool(), SearchImagesTool(), SpeakTool()]
    bound = llm.bind_tools(tools, tool_choice="caption_image")
    request = "Describe the picture at /home/me/pictures/holiday/lake_sunset.jpg in detail"
    off = bound.invoke(request, prompt_lookup="off", max_new_tokens=96)
    on = bound.invoke(request, prompt_lookup="calls", max_new_tokens=96)
    assert [(c["name"], c["args"]) for c in on.tool_calls] == [(c["name"], c["args"]) for c in off.tool_calls]
    assert "lake_sunset.jpg" in on.tool_calls[0]["args"]["image"]
    drafted, plain = on.response_metadata["decode"], off.response_metadata["decode"]
    assert drafted["generated_tokens"] == plain["generated_tokens"]
    assert plain["drafted_tokens"] == 0 and drafted["accepted_tokens"] >= 3
    assert drafted["forward_passes"] <= plain["forward_passes"] - drafted["accepted_tokens"] // 2
