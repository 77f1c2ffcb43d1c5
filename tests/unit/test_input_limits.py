"""Bad inputs get the usual clear error: non-finite numbers, null for required values, pickle weights."""

from __future__ import annotations

import json
import math

import pytest

from agent.core.config import load_config
from agent.core.errors import ConfigError, ModelLoadError


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", "-2", "0"])
def test_memory_budgets_must_be_positive_finite_numbers(tmp_path, budget):
    path = tmp_path / "c.toml"
    path.write_text(f"[tools]\nmemory_budget_gb = {{cpu = {budget}}}\n")
    with pytest.raises(ConfigError, match=r"tools\.memory_budget_gb") as caught:
        load_config(path, environ={})
    assert "\n" in str(caught.value) and "Traceback" not in str(caught.value)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("LLAVA_AGENT_TOOLS__MEMORY_BUDGET_GB", '{"cpu": Infinity}'),
        ("LLAVA_AGENT_MODEL__TEMPERATURE", "NaN"),
        ("LLAVA_AGENT_MEMORY__RECALL_MIN_SCORE", "nan"),
        ("LLAVA_AGENT_TOOLS__TIMEOUT_S", "inf"),
    ],
)
def test_non_finite_numbers_from_the_environment_are_refused(variable, value):
    with pytest.raises(ConfigError):
        load_config({}, environ={variable: value})


@pytest.mark.parametrize("variable", ["LLAVA_AGENT_MODEL__MODEL", "LLAVA_AGENT_MODEL__ADAPTER", "LLAVA_AGENT_DATA_DIR"])
def test_null_in_the_environment_never_silently_picks_the_default(variable):
    with pytest.raises(ConfigError, match=f"environment variable {variable} = 'null': null is not a value here"):
        load_config({}, environ={variable: "null"})


def test_fine_tuning_numbers_must_be_finite():
    from finetune.config import TrainConfig

    for name in ("learning_rate", "epochs", "weight_decay"):
        with pytest.raises(ConfigError, match=f"`{name}` should be a finite number, got nan"):
            TrainConfig(model="m", data="d", output_dir="o", **{name: math.nan})


@pytest.mark.parametrize(
    "tool_class, args, field",
    [
        ("tools.speak.SpeakTool", {"text": "hi", "speed": math.nan}, "speed"),
        ("tools.generate.GenerateImageTool", {"prompt": "a cat", "guidance": math.inf}, "guidance"),
        ("tools.caption.CaptionImageTool", {"image": None}, "image"),
        ("tools.search.SearchImagesTool", {"query": None}, "query"),
    ],
)
def test_tool_arguments_refuse_non_finite_numbers_and_null_strings(tool_class, args, field):
    import importlib

    from pydantic import ValidationError

    module, name = tool_class.rsplit(".", 1)
    tool = getattr(importlib.import_module(module), name)()
    # the model reads the refusal as an error message it can act on
    message = tool.invoke({"type": "tool_call", "id": "c", "name": tool.name, "args": args})
    assert message.status == "error" and field in message.content
    tool.handle_validation_error = False  # and a caller who asks for the exception gets it
    with pytest.raises(ValidationError) as caught:
        tool.invoke({"type": "tool_call", "id": "c", "name": tool.name, "args": args})
    assert field in str(caught.value)


def test_an_adapter_stored_as_pickle_is_refused_unless_allowed(tmp_path):
    from agent.llava.loading import ModelSpec, _apply_adapter

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "adapter_model.bin").write_bytes(b"not really a pickle")
    spec = ModelSpec("/m", "none", "float32", "cpu", str(adapter))
    with pytest.raises(ModelLoadError, match="only as adapter_model.bin, a pickle file .* model.allow_pickle_weights"):
        _apply_adapter(object(), spec)
    allowed = ModelSpec("/m", "none", "float32", "cpu", str(adapter), allow_pickle_weights=True)
    with pytest.raises(Exception) as caught:  # past the check: PEFT itself fails on the fake model
        _apply_adapter(object(), allowed)
    assert "pickle file" not in str(caught.value)
