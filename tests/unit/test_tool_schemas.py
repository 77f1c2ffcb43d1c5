"""Every argument with a fixed set of valid values is an enum (or bounded) in the tool's own schema.

Constrained decoding writes only values the schema allows, so the schema must allow only values
the tool accepts: voices the installed espeak-ng has, sizes the pipeline takes, counts the index
returns. Each test draws from a schema and checks the tool's own checks accept what it drew.
"""

from __future__ import annotations

import logging
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.config import load_config
from agent.core.errors import ConfigError, InputError
from agent.llava.messages import tool_schemas
from tests.unit.test_schema_regex import values_for
from tools.caption import CaptionImageTool
from tools.generate import GenerateImageTool
from tools.search import SearchImagesTool
from tools.speak import DEFAULT_VOICES, SpeakTool, espeak_languages, espeak_voices, speak_arguments

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def parameters(tool) -> dict:
    return tool_schemas([tool])[0]["function"]["parameters"]


def voice_enum(tool) -> list[str]:
    [options] = [p["anyOf"] for name, p in parameters(tool)["properties"].items() if name == "voice"]
    assert {"type": "null"} in options  # no voice: the default one
    return next(o["enum"] for o in options if "enum" in o)


@needs_espeak
def test_speak_offers_only_voices_the_installed_espeak_ng_has():
    offered = voice_enum(SpeakTool())
    installed = {v.lower() for v in espeak_voices()}
    assert offered and all(v.lower() in installed for v in offered)
    assert offered == [v for v in DEFAULT_VOICES if v.lower() in installed]
    assert voice_enum(SpeakTool(voices="all")) == list(espeak_languages())
    assert len(espeak_languages()) > 50


@needs_espeak
def test_configured_voices_reach_the_schema_and_unknown_ones_are_left_out(caplog):
    config = load_config({"tools": {"speak_voices": ["fr", "de", "klingon"]}}, environ={})
    with caplog.at_level(logging.WARNING, logger="tools.speak"):
        tool = SpeakTool.from_config(config)
    assert voice_enum(tool) == ["fr", "de"]
    assert "espeak-ng has no voice 'klingon'" in caplog.text
    nothing = load_config({"tools": {"speak_voices": ["klingon"]}}, environ={})
    with pytest.raises(ConfigError, match="none of the voices in tools.speak_voices \\(klingon\\) is installed"):
        SpeakTool.from_config(nothing)
    with pytest.raises(ValueError, match="none of the voices"):  # the constructor: a pydantic validation error
        SpeakTool(voices=["klingon"])


def test_without_espeak_ng_the_documented_list_is_offered():
    tool = SpeakTool(espeak_executable="/nonexistent/espeak-ng")
    assert voice_enum(tool) == list(DEFAULT_VOICES)


def test_vits_has_no_voice_argument_and_refuses_one():
    tool = SpeakTool(engine="vits")
    assert list(parameters(tool)["properties"]) == ["text", "speed"]
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "speak", "args": {"text": "hi", "voice": "en"}})
    assert message.status == "error"
    assert message.content == (
        "Error running speak with voice='en': voice is not an argument of speak (its arguments: text, speed). "
        "Please fix the arguments and try again."
    )


def test_a_voice_outside_the_enum_is_a_message_naming_the_allowed_ones():
    tool = SpeakTool(voices=["en", "fr"], espeak_executable="/nonexistent/espeak-ng")
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "speak", "args": {"text": "hi", "voice": "xx"}})
    assert message.status == "error"
    assert message.content == (
        "Error running speak with voice='xx': voice must be one of 'en' or 'fr'. Please fix the arguments and try again."
    )


def test_argument_order_is_the_order_calls_are_written_in():
    assert list(parameters(SpeakTool())["properties"]) == ["text", "voice", "speed"]
    assert list(speak_arguments(("en",)).model_fields) == ["text", "voice", "speed"]


@pytest.mark.parametrize(
    ("tool", "argument", "bounds"),
    [
        (SpeakTool(), "speed", {"minimum": 0.5, "maximum": 2.0}),
        (SearchImagesTool(), "k", {"minimum": 1, "maximum": 100}),
        (GenerateImageTool(), "width", {"minimum": 64, "maximum": 2048, "multipleOf": 8}),
        (GenerateImageTool(), "height", {"minimum": 64, "maximum": 2048, "multipleOf": 8}),
        (GenerateImageTool(), "guidance", {"minimum": 0.0, "maximum": 30.0}),
        (CaptionImageTool(), "detail", {"enum": ["short", "detailed"]}),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_bounded_arguments_carry_their_bounds(tool, argument, bounds):
    schema = parameters(tool)["properties"][argument]
    assert {key: schema.get(key) for key in bounds} == bounds


def test_search_bound_matches_the_index():
    from memory.image_index import MAX_K

    assert parameters(SearchImagesTool())["properties"]["k"]["maximum"] == MAX_K


def test_a_lower_step_limit_is_in_the_schema():
    steps = parameters(GenerateImageTool(max_steps=8))["properties"]["steps"]
    assert {"type": "integer", "minimum": 1, "maximum": 8} in steps["anyOf"]
    assert list(parameters(GenerateImageTool(max_steps=8))["properties"]) == list(
        parameters(GenerateImageTool())["properties"]
    )


def test_a_lower_size_limit_is_in_the_schema_and_the_checks():
    tool = GenerateImageTool(max_side=300, max_steps=4, default_steps=2)
    properties = parameters(tool)["properties"]
    for side in ("width", "height"):
        assert {key: properties[side].get(key) for key in ("minimum", "maximum", "multipleOf", "default")} == {
            "minimum": 64, "maximum": 296, "multipleOf": 8, "default": 296}
    assert list(properties) == list(parameters(GenerateImageTool())["properties"])
    with pytest.raises(InputError, match="width = 304 must be a multiple of 8 from 64 to 296"):
        tool.validate("a lighthouse", 304, 296, None, 0.0, None)
    assert tool.validate("a lighthouse", 296, 64, None, 0.0, None) == 2


def test_a_default_step_count_over_the_limit_is_refused_by_name():
    with pytest.raises(ValueError, match=r"tools.image_steps\) is over the limit of 4 \(tools.image_max_steps"):
        GenerateImageTool(max_steps=4, default_steps=5)


def _blank(text: str) -> bool:
    return not text.strip()


GENERATE = GenerateImageTool(max_steps=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_generate_call_the_schema_allows_passes_the_tools_checks(data):
    schema = parameters(GENERATE)
    arguments = data.draw(values_for(schema, schema))
    if _blank(arguments["prompt"]) or len(arguments["prompt"]) > 2000:
        return  # free text: the one thing a schema cannot promise (the tool says so in its message)
    GENERATE.args_schema.model_validate(arguments)
    values = {"width": 512, "height": 512, "steps": None, "guidance": 0.0, "seed": None}
    values.update({k: v for k, v in arguments.items() if k in values})
    assert 1 <= GENERATE.validate(arguments["prompt"], **values) <= 8


@needs_espeak
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_every_speak_call_the_schema_allows_passes_the_tools_checks(data):
    tool = SpeakTool(voices="all")
    schema = parameters(tool)
    arguments = data.draw(values_for(schema, schema))
    tool.args_schema.model_validate(arguments)
    assert 0.5 <= arguments.get("speed", 1.0) <= 2.0
    if arguments.get("voice") is not None:
        assert tool._check_voice(tool._espeak_path(), arguments["voice"])
