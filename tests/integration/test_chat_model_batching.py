"""Several plain requests in one generation (``agent.llava.batching``) on the tiny random model.

A batched row must be the request it would have been alone: same greedy text, same finish
reason, its own limits; a row that cannot run, or is cancelled, leaves the others alone. Exactly
so in float32 with the model's own output head, the one ``generate`` (batched rows) uses: the
quantized head copy a single CPU request decodes with by default (outside its rescored best
tokens), 4-bit and bf16 kernels round differently and can flip a greedy near tie (which precision ``auto`` picks depends on the CPU).
"""

from __future__ import annotations

import threading

import pytest
from langchain_core.messages import HumanMessage

from agent import ChatLlava
from agent.core.errors import ContextLengthError, InputError
from agent.llava.batching import BatchRequest, stream_batch

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
PROMPTS = ["Say hello", "Tell me a long story about a red circle", "What colour is the sky?"]


@pytest.fixture(scope="module")
def llm(tiny_llava_qwen2) -> ChatLlava:
    return ChatLlava(model=str(tiny_llava_qwen2), temperature=0.0, device="cpu", quantization="none", dtype="float32",
                     lm_head="model")  # fmt: skip


def collect(llm, requests, **kwargs) -> dict[int, object]:
    out: dict[int, object] = {}
    for index, chunk in stream_batch(llm, requests, **kwargs):
        if isinstance(chunk, Exception):
            out[index] = chunk
            continue
        text, _ = out.get(index, ("", None))
        out[index] = (text + chunk.content, chunk if chunk.usage_metadata else None)
    return out


def test_rows_match_their_single_replies_with_their_own_limits(llm):
    alone = [llm.invoke(prompt, max_tokens=24) for prompt in PROMPTS]
    stop = alone[1].content[5:7]
    requests = [
        BatchRequest([HumanMessage(PROMPTS[0])], max_tokens=24),
        BatchRequest([HumanMessage(PROMPTS[1])], max_tokens=24, stop=[stop]),
        BatchRequest([HumanMessage(PROMPTS[2])], max_tokens=7),
        BatchRequest([HumanMessage("x " * 3000)], max_tokens=24),  # over the 2048-token context
    ]
    out = collect(llm, requests)
    text, last = out[0]
    assert text == alone[0].content and last.usage_metadata == alone[0].usage_metadata
    assert last.response_metadata["finish_reason"] == alone[0].response_metadata["finish_reason"]
    text, last = out[1]
    assert text == alone[1].content[: alone[1].content.index(stop)]
    assert last.response_metadata["finish_reason"] == "stop"
    text, last = out[2]
    assert alone[2].content.startswith(text) and last.usage_metadata["output_tokens"] <= 7
    assert isinstance(out[3], ContextLengthError)


def test_a_cancelled_row_ends_alone_and_images_are_refused(llm):
    alone = llm.invoke(PROMPTS[0], max_tokens=12)
    cancel = threading.Event()
    cancel.set()
    out = collect(llm, [BatchRequest([HumanMessage(PROMPTS[1])], max_tokens=300, cancel=cancel),
                        BatchRequest([HumanMessage(PROMPTS[0])], max_tokens=12)])  # fmt: skip
    assert out[0][1].response_metadata["finish_reason"] == "cancelled"
    assert out[0][1].usage_metadata["output_tokens"] <= 2
    assert out[1][0] == alone.content
    from PIL import Image

    with pytest.raises(InputError, match="text-only"):
        collect(llm, [BatchRequest([HumanMessage(content=[{"type": "image", "image": Image.new("RGB", (8, 8))}])])])
