"""Tool checkpoints load from safetensors only unless the user opts in (pickle files can run code)."""

from __future__ import annotations

import pytest

from agent.core.model_manager import ModelManager
from tools.speak import SpeakTool

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pickled_vits(tool_model_paths, tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, VitsModel

    folder = tmp_path_factory.mktemp("vits-pickled")
    model = VitsModel.from_pretrained(tool_model_paths["vits"])
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the old pickle format
    AutoTokenizer.from_pretrained(tool_model_paths["vits"]).save_pretrained(folder)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def speak(tool):
    return tool.invoke({"type": "tool_call", "id": "c", "name": "speak", "args": {"text": "hello there"}})


def test_a_pickle_only_tool_checkpoint_is_refused_by_default(pickled_vits, tool_workspace):
    tool = SpeakTool(engine="vits", vits_model=str(pickled_vits), device="cpu",
                     artifacts_dir=tool_workspace["artifacts"], manager=ModelManager())
    message = speak(tool)
    assert message.status == "error" and "safetensors" in message.content, message.content
    assert not list(tool_workspace["artifacts"].iterdir())


def test_opting_in_loads_it(pickled_vits, tool_workspace):
    from agent.core.config import load_config

    config = load_config({"tools": {"allow_pickle_weights": True, "tts_engine": "vits", "vits_model": str(pickled_vits),
                                    "device": "cpu", "artifacts_dir": str(tool_workspace["artifacts"])}}, environ={})
    tool = SpeakTool.from_config(config, ModelManager())
    assert speak(tool).status == "success"
