"""Configuration loading: TOML, environment overrides, validation messages, unreadable files."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.core.config import AppConfig, config_to_toml, env_overrides, load_config, save_config_snapshot
from agent.core.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_values_are_loaded(tmp_path):
    path = write(tmp_path, '[model]\nmodel = "/models/llava"\nmax_new_tokens = 64\n[agent]\nrecursion_limit = 6\n')
    config = load_config(path, environ={})
    assert config.model.model == "/models/llava"
    assert config.model.max_new_tokens == 64
    assert config.agent.recursion_limit == 6
    assert config.tools.enabled == ["caption_image", "generate_image", "search_images", "speak", "describe_video"]


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, "[model]\nmax_new_tokens = 64\n")
    environ = {
        "LLAVA_AGENT_MODEL__MAX_NEW_TOKENS": "32",
        "LLAVA_AGENT_TOOLS__ENABLED": '["speak"]',
        "LLAVA_AGENT_DATA_DIR": str(tmp_path / "data"),
        "LLAVA_AGENT_AGENT__LONG_TERM_MEMORY": "false",
    }
    config = load_config(path, environ=environ)
    assert config.model.max_new_tokens == 32
    assert config.tools.enabled == ["speak"]
    assert config.data_dir == tmp_path / "data"
    assert config.agent.long_term_memory is False
    assert config.conversations_db == tmp_path / "data" / "conversations.sqlite"


def test_config_file_named_by_the_environment_is_used(tmp_path, monkeypatch):
    path = write(tmp_path, "[agent]\nrecursion_limit = 9\n")
    monkeypatch.setenv("LLAVA_AGENT_CONFIG", str(path))
    assert load_config().agent.recursion_limit == 9


def test_dict_source_and_explicit_overrides(tmp_path):
    config = load_config({"agent": {"recursion_limit": 4}}, overrides={"agent": {"tool_choice": "speak"}}, environ={})
    assert (config.agent.recursion_limit, config.agent.tool_choice) == (4, "speak")


@pytest.mark.parametrize(
    "toml, expected",
    [
        ('[model]\nquantization = "fp4"\n',
         "model.quantization = 'fp4': not allowed; input should be 'auto', '4bit', '8bit', 'int8-weights' or 'none'"),
        ('[model]\ndtype = "int3"\n',
         "model.dtype = 'int3': not allowed; input should be 'auto', 'float32', 'float16' or 'bfloat16'"),
        ("[agent]\nrecursion_limit = 1\n", "agent.recursion_limit = 1: Input should be greater than or equal to 2"),
        ('[tools]\ntts_engine = "say"\n',
         "tools.tts_engine = 'say': not allowed; input should be 'espeak-ng', 'vits' or 'bark'"),
        ("[memory]\nrecall_min_score = 3\n", "memory.recall_min_score = 3: Input should be less than or equal to 1"),
        ('[tools]\nvideo_offload = "disk"\n',
         "tools.video_offload = 'disk': not allowed; input should be 'auto', 'none', 'model' or 'sequential'"),
        ("[tools]\nmesh_grid_size = 8\n", "tools.mesh_grid_size = 8: Input should be greater than or equal to 16"),
    ],
)
def test_bad_values_quote_the_value_and_the_allowed_ones(tmp_path, toml, expected):
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    message = str(excinfo.value)
    assert message.startswith(f"invalid configuration ({path} + environment):")
    assert expected in message


def test_unknown_settings_list_the_known_ones(tmp_path):
    path = write(tmp_path, "[agent]\nrecursion = 3\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert "agent.recursion: unknown setting; known settings here are ground_arguments, long_term_memory, recursion_limit" in str(
        excinfo.value
    )


def test_bad_environment_value_names_its_source(tmp_path):
    with pytest.raises(ConfigError, match=r"model.max_new_tokens = 'lots'"):
        load_config({}, environ={"LLAVA_AGENT_MODEL__MAX_NEW_TOKENS": "lots"})
    with pytest.raises(ConfigError, match="environment variable LLAVA_AGENT_COLOUR names no setting"):
        env_overrides({"LLAVA_AGENT_COLOUR": "red"})


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, environ={})
    assert str(excinfo.value) == f"config file {path} does not exist; create it or pass another --config"


def test_unreadable_file(tmp_path):
    folder = tmp_path / "a-folder.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=rf"config file {folder} cannot be read \(.*\); check its permissions"):
        load_config(folder, environ={})
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(binary, environ={})


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[model\nmodel = 1\n")
    with pytest.raises(ConfigError, match=rf"config file {path} is not valid TOML"):
        load_config(path, environ={})


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = load_config({"data_dir": str(tmp_path), "agent": {"tool_choice": "any"}}, environ={})
    snapshot = save_config_snapshot(config, tmp_path / "snap")
    again = load_config(snapshot, environ={})
    assert again == config
    assert isinstance(again, AppConfig)
    assert config_to_toml(again) == snapshot.read_text()
