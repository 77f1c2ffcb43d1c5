"""Reusing the previous prompt's encoding changes no output: same greedy replies, with and without it."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from agent import ChatLlava
from agent.prompt_cache import prompt_cache_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

SYSTEM = "You are a helpful assistant. " * 12


def _replies(model_path, prompt_cache: bool) -> tuple[list[str], list[int]]:
    llm = ChatLlava(model=str(model_path), quantization="none", dtype="float32", temperature=0,
                    max_new_tokens=8, device="cpu", prompt_cache=prompt_cache)
    history = [SystemMessage(SYSTEM)]
    replies, reused = [], []
    for text in ["Describe the image.", "What colour is the shape?", "Hello, how are you today?"]:
        history.append(HumanMessage(text))
        reply = llm.invoke(history)
        replies.append(reply.content)
        reused.append(prompt_cache_for(llm.loaded).reused_tokens)
        history.append(AIMessage(reply.content))
    return replies, reused


def test_reused_prompts_give_the_same_replies(tiny_llava_qwen2):
    plain, _ = _replies(tiny_llava_qwen2, prompt_cache=False)
    cached, reused = _replies(tiny_llava_qwen2, prompt_cache=True)
    assert cached == plain
    assert reused[0] == 0 and reused[1] > 0 and reused[2] > reused[1]  # each call reuses the conversation so far
