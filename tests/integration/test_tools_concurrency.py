"""Tools sharing one model are safe when LangChain runs several calls of one reply in parallel.

A diffusers pipeline keeps per-call state on itself and its scheduler (timesteps, step index,
guidance), and a VITS model reads its ``speaking_rate`` attribute during the forward pass: calls
running at once must give exactly what the same calls give one after another.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.core.model_manager import ModelManager
from tools.generate import GenerateImageTool
from tools.speak import SpeakTool

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]


def call(tool, **args) -> dict:
    message = tool.invoke({"type": "tool_call", "id": "c", "name": tool.name, "args": args})
    assert message.status == "success", message.content
    return message.artifact


def pixels(path: str) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return hashlib.sha256(image.tobytes()).hexdigest()


def audio(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()[44:]).hexdigest()  # the samples, after the WAV header


def test_parallel_image_calls_equal_sequential_ones(tool_model_paths, tool_workspace):
    tool = GenerateImageTool(model=str(tool_model_paths["stable_diffusion"]), device="cpu",
                             artifacts_dir=tool_workspace["artifacts"], manager=ModelManager())
    calls = [dict(prompt=f"a red cat {i}", width=64, height=64, steps=2 + i % 3, guidance=float(i % 2) * 3, seed=i)
             for i in range(8)]
    sequential = [pixels(call(tool, **args)["path"]) for args in calls]
    with ThreadPoolExecutor(len(calls)) as pool:
        parallel = [pixels(artifact["path"]) for artifact in pool.map(lambda args: call(tool, **args), calls)]
    assert parallel == sequential


def test_parallel_vits_calls_equal_sequential_ones(tool_model_paths, tool_workspace):
    tool = SpeakTool(engine="vits", vits_model=str(tool_model_paths["vits"]), device="cpu",
                     artifacts_dir=tool_workspace["artifacts"], manager=ModelManager())
    calls = [dict(text=f"hello number {i}. how are you today?", speed=(0.5, 1.0, 2.0)[i % 3]) for i in range(9)]
    sequential = [audio(call(tool, **args)["path"]) for args in calls]
    assert audio(call(tool, **calls[0])["path"]) == sequential[0], "the same call gives the same speech"
    with ThreadPoolExecutor(len(calls)) as pool:
        parallel = [audio(artifact["path"]) for artifact in pool.map(lambda args: call(tool, **args), calls)]
    assert parallel == sequential


def test_a_generation_past_its_time_limit_writes_nothing_and_frees_the_pipeline(tool_model_paths, tool_workspace):
    import time
    from types import SimpleNamespace

    from agent.app.tool_limits import ToolLimitsMiddleware

    tool = GenerateImageTool(model=str(tool_model_paths["stable_diffusion"]), device="cpu",
                             artifacts_dir=tool_workspace["artifacts"], manager=ModelManager())
    call(tool, prompt="warm up", width=64, height=64, seed=1)  # loads the pipeline
    limits = ToolLimitsMiddleware(8, lambda name: 0.2)
    args = {"prompt": "a long one", "width": 64, "height": 64, "steps": 100, "seed": 2}
    request = SimpleNamespace(tool_call={"name": "generate_image", "args": args, "id": "g"}, state={"messages": []})
    started = time.monotonic()
    message = limits.wrap_tool_call(request, lambda r: tool.invoke({"type": "tool_call", **r.tool_call}))
    assert message.status == "error" and "time limit of 0.2 s" in message.content
    assert time.monotonic() - started < 5
    after = call(tool, prompt="next", width=64, height=64, seed=3)  # the stopped call let go of the pipeline
    assert Path(after["path"]).is_file()
    time.sleep(0.5)
    names = [p.name for p in tool_workspace["artifacts"].iterdir()]
    assert len(names) == 2 and not [n for n in names if "a-long-one" in n], "the stopped call saved nothing"
