"""Example requests tools declare: built-ins and plugins through the registry, or on the tool itself."""

from __future__ import annotations

import pytest
from langchain_core.tools import StructuredTool

from agent.core.config import load_config
from agent.core.errors import ConfigError
from tools import ToolExample, build_tools, register_tool, tool_examples
from tools.registry import unregister_tool


def test_every_built_in_tool_declares_examples(tmp_path):
    tools = build_tools(load_config({"data_dir": str(tmp_path)}))
    for tool in tools:
        examples = tool_examples(tool)
        assert len(examples) >= 5, tool.name
        assert tool.metadata["examples"] == list(examples)  # carried on the built tool
        properties = tool.tool_call_schema.model_json_schema()["properties"]
        for example in examples:
            assert set(example.arguments) <= set(properties), (tool.name, example.request)
    for name in ("remember", "recall"):  # long-term memory's tools, built outside the registry
        assert len(tool_examples(name)) >= 5
    assert any(example.attaches_image for example in tool_examples("caption_image"))


def test_a_plugin_declares_examples_the_same_way(tmp_path):
    def make(config, manager):
        def weather(city: str) -> str:
            """Tell the weather forecast for a city."""
            return "sunny"

        return StructuredTool.from_function(weather)

    register_tool("weather", make, examples=[
        ToolExample("What's the weather in {city}?", {"city": "{city}"}, slots={"city": ("Oslo", "Lima")}),
        {"request": "Forecast for {city}", "arguments": {"city": "{city}"}, "slots": {"city": ["Rome"]}},
    ])
    try:
        config = load_config({"data_dir": str(tmp_path), "tools": {"enabled": ["weather"]}})
        (tool,) = build_tools(config)
        examples = tool_examples(tool)
        assert [e.request for e in examples] == ["What's the weather in {city}?", "Forecast for {city}"]
        assert examples[1].slots == {"city": ("Rome",)}
    finally:
        unregister_tool("weather")
    assert tool_examples("weather") == ()


def test_examples_on_the_tool_win_over_registered_ones():
    tool = StructuredTool.from_function(lambda text: text, name="speak", description="Say it.",
                                        metadata={"examples": ["Pronounce {sentence}"]})
    assert [e.request for e in tool_examples(tool)] == ["Pronounce {sentence}"]


@pytest.mark.parametrize(
    ("request_text", "arguments", "message"),
    [
        ("", {}, "needs a request"),
        ("Draw it", {"prompt": "{subject}"}, "does not contain"),
        ("Caption {attached}", {"image": "{attached}"}, "arguments only"),
        ("Draw {subject}", ["prompt"], "must be a dict"),
    ],
)
def test_bad_examples_are_refused(request_text, arguments, message):
    with pytest.raises(ConfigError, match=message):
        ToolExample(request_text, arguments)
