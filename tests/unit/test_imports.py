"""The public API of each package, pinned: a name added or removed is a deliberate change of this file."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

EXPECTED_ALL = {
    "agent": [
        "AgentEvent", "AgentReply", "AppConfig", "ChatLlava", "ConfigError", "ContextLengthError", "DatasetError",
        "GenerationStopped", "GenerationTimeoutError", "ImageError", "InputError", "LlavaAgentError",
        "ModelLoadError", "ModelNotFoundError", "MultimodalAgent", "PathNotAllowedError", "QuantizationError",
        "ReplyEvent", "StoreError", "TokenEvent", "ToolCallEvent", "ToolError", "ToolResultEvent", "__version__",
        "load_config",
    ],
    "agent.core": [
        "AppConfig", "ModelManager", "atomic_write_text", "get_model_manager", "load_config", "load_image",
        "resolve_allowed_path", "resolve_device", "resolve_precision", "resolve_training_precision",
        "write_new_artifact",
    ],
    "agent.llava": [
        "ChatLlava", "GenerationTimeoutError", "image_capacity", "load_model", "messages_to_turns", "render_prompt",
        "resolve_spec", "tool_schemas",
    ],
    "agent.decoding": [
        "ToolCallConstraint", "ToolCallParseError", "format_tool_call", "json_output_constraint",
        "json_schema_regex", "normalise_tool_choice", "parse_tool_calls", "to_template_turns",
    ],
    "agent.app": [
        "AgentEvent", "AgentReply", "ContextPolicyMiddleware", "GenerationStopped", "MultimodalAgent", "ReplyEvent",
        "TokenEvent", "ToolCallEvent", "ToolResultEvent", "build_system_prompt",
    ],
    "agent.cli": ["main"],
    "agent.serve": ["ApiKeys", "FairQueue", "build_app", "create_app", "run_server"],
    "tools": [
        "CaptionImageTool", "DescribeVideoTool", "Generate3DTool", "GenerateImageTool", "GenerateVideoTool",
        "ModelManager", "SearchImagesTool", "SpeakTool", "available_tools", "build_tool", "build_tools",
        "get_model_manager", "register_tool",
    ],
    "memory": ["ClipEmbedder", "ConversationStore", "ImageIndex", "LongTermMemory", "TextEmbedder", "get_chroma_client"],
    "finetune": [
        "ConversationEncoder", "EvalResult", "PairTrainConfig", "PairTrainResult", "Sample", "TrainConfig",
        "TrainResult", "TrainingCollator", "ValidationReport", "evaluate", "merge", "train", "train_caption",
        "train_clip", "validate",
    ],
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(EXPECTED_ALL))
def test_all_is_pinned_and_every_name_resolves(package):
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(EXPECTED_ALL[package])
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_unknown_names_raise_attribute_error():
    import agent

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        agent.Nope  # noqa: B018


def test_importing_the_packages_loads_no_heavy_library():
    code = (
        "import sys, agent, agent.core, agent.llava, agent.decoding, agent.app, agent.serve, tools, memory, finetune; "
        "heavy = ('torch', 'transformers', 'diffusers', 'chromadb', 'bitsandbytes', 'peft', 'langchain', "
        "'langchain_core', 'fastapi', 'uvicorn'); print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
