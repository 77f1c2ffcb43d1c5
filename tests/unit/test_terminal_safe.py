"""Every CLI output path is terminal-safe: controls, bidi and zero-width characters show as escapes."""

from __future__ import annotations

import json
import unicodedata

import pytest

from agent.cli.main import main
from agent.core.terminal_safe import json_text, terminal_safe

# What an attacker puts in a file name, a thread title, a remembered fact or a model reply.
HOSTILE = (
    "title\x1b]0;pwned\x07 clip\x1b]52;c;ZWNobyBoaQ==\x07 clear\x1b[2J c1\x9b31m "
    "bidi\u202egnp.exe isolate\u2066x\u2069 zero\u200bwidth\u200d joiner\u2060 bom\ufeff tag\U000e0041 "
    "sep\u2028end"
)


def raw_unsafe(text: str) -> list[str]:
    """Characters a terminal would act on or that hide text, left unescaped in ``text``."""
    return [ch for ch in text if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")]


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("right-to-left \u202eoverride", "right-to-left \\u202eoverride"),
        ("isolates \u2066\u2067\u2068\u2069", "isolates \\u2066\\u2067\\u2068\\u2069"),
        ("marks \u200e\u200f\u061c", "marks \\u200e\\u200f\\u061c"),
        ("zero \u200b\u200c\u200d\u2060\ufeff", "zero \\u200b\\u200c\\u200d\\u2060\\ufeff"),
        ("tag \U000e0041\U000e007f", "tag \\U000e0041\\U000e007f"),
        ("kept: é 猫 🙂 e\u0301", "kept: é 猫 🙂 e\u0301"),
    ],
)
def test_bidi_zero_width_and_tag_characters_are_escaped(raw, shown):
    assert terminal_safe(raw) == shown


def test_json_text_is_exact_and_safe():
    value = {"text": HOSTILE, "nested": [HOSTILE, 1.5, None], "ok": "猫 🙂"}
    text = json_text(value, default=str)
    assert json.loads(text) == value
    assert raw_unsafe(text) == []
    assert "猫 🙂" in text  # readable text stays readable


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    monkeypatch.setenv("LLAVA_AGENT_DATA_DIR", str(folder))
    return folder


def test_threads_list_and_show_escape_stored_text(data_dir, capsys):
    from langchain_core.messages import AIMessage, HumanMessage

    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import load_config
    from tests.scripted_chat_model import ScriptedChatModel

    config = load_config()
    agent = MultimodalAgent(ScriptedChatModel(replies=[AIMessage(content=HOSTILE)]), [], config=config)
    thread = agent.chat(HOSTILE).thread_id
    assert isinstance(agent.history(thread)[0], HumanMessage)
    agent.close()
    for argv in (["threads", "list"], ["threads", "show", thread]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert raw_unsafe(out) == [], argv
        assert "\\x1b]0;pwned\\x07" in out


def test_errors_on_stderr_are_escaped(data_dir, capsys):
    assert main(["threads", "show", "nope\x1b]0;x\x07\u202e"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown thread") and raw_unsafe(err) == []


def test_ask_streams_escaped_text_and_json_stays_exact(data_dir, monkeypatch, capsys):
    from langchain_core.messages import AIMessage

    from agent.app.multimodal_agent import MultimodalAgent
    from tests.scripted_chat_model import ScriptedChatModel

    def scripted(config, **kwargs):
        return MultimodalAgent(ScriptedChatModel(replies=[AIMessage(content=HOSTILE)]), [], config=config)

    monkeypatch.setattr(MultimodalAgent, "from_config", staticmethod(scripted))
    assert main(["ask", "hello"]) == 0
    out = capsys.readouterr().out
    assert raw_unsafe(out) == [] and "\\x1b]0;pwned\\x07" in out

    assert main(["ask", "hello", "--json"]) == 0
    out = capsys.readouterr().out
    assert raw_unsafe(out) == []
    assert json.loads(out)["text"] == HOSTILE.strip()


def test_finetune_validate_escapes_dataset_text(tmp_path, capsys):
    data = tmp_path / "bad\u202egnp.json"
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    data.write_text(json.dumps([good, {"conversations": [{"from": "human\x1b]0;x\x07", "value": "hi"}]}]))
    assert main(["finetune", "validate", str(data), "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert raw_unsafe(out) == [] and "\\u202egnp.json" in out and "\\x1b]0;x\\x07" in out
