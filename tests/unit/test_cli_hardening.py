"""The command line at its edges: progress bars on stderr, bad attachments in the chat, messages that
start with a path, a closed output pipe, a busy or impossible server port, doctor's model hints."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.app.multimodal_agent import MultimodalAgent
from agent.cli.main import OUTPUT_CLOSED_EXIT, main
from agent.cli.terminal import COMMANDS, TerminalChat, is_command
from agent.core.config import load_config
from agent.core.errors import ImageError, InputError
from agent.core.terminal_safe import progress_safe, terminal_safe_streams
from tests.scripted_chat_model import ScriptedChatModel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    monkeypatch.setenv("LLAVA_AGENT_DATA_DIR", str(folder))
    return folder


# ----- progress bars on stderr ------------------------------------------------------------------


def test_progress_bars_redraw_on_stderr(capsys):
    from tqdm import tqdm

    with terminal_safe_streams():
        for _ in tqdm(range(2), desc="shards"):
            for _ in tqdm(range(2), desc="files", position=1, leave=False):
                pass
    err = capsys.readouterr().err
    assert "\rshards: 100%|" in err and "\x1b[A" in err  # the redraw and the nested bar's cursor-up
    assert "\\x0d" not in err and "\\x1b" not in err


@pytest.mark.parametrize(
    "written, shown",
    [
        # log and error lines start with their text: every control in them stays escaped
        ("WARNING x: skipped cat\r\x1b[A\x1b[2Kfake line\n", "WARNING x: skipped cat\\x0d\\x1b[A\\x1b[2Kfake line\n"),
        ("error: title\x1b]0;pwned\x07\n", "error: title\\x1b]0;pwned\\x07\n"),
        # a redraw keeps only carriage return, cursor up and erase in line
        ("\r\x1b[Kloading 50%", "\r\x1b[Kloading 50%"),
        ("\n\n\x1b[A\x1b[A", "\n\n\x1b[A\x1b[A"),
        ("\rbar \x1b]52;c;ZWNobw==\x07 \x1b[2J \x1b[31m \u202eexe \x9b1A", "\rbar \\x1b]52;c;ZWNobw==\\x07 \\x1b[2J "
         "\\x1b[31m \\u202eexe \\x9b1A"),
    ],
)
def test_stderr_keeps_only_a_progress_redraw(capsys, written, shown):
    with terminal_safe_streams():
        sys.stderr.write(written)
        sys.stdout.write(written)
    captured = capsys.readouterr()
    assert captured.err == shown
    assert "\r" not in captured.out and "\x1b" not in captured.out  # stdout keeps none of them


def test_progress_safe_keeps_the_redraw_controls_in_place():
    assert progress_safe("\rdesc\x1b[3A x\x1b[0K\x07") == "\rdesc\x1b[3A x\x1b[0K\\x07"


# ----- the chat: attachments, commands and paths ------------------------------------------------


@pytest.fixture
def chat(tmp_path):
    config = load_config({"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False, "routing": "model"}},
                         environ={})  # fmt: skip
    model = ScriptedChatModel(replies=["First answer.", "Second answer.", "Third answer."])
    out = io.StringIO()
    terminal = TerminalChat(config, output=out, agent_factory=lambda c: MultimodalAgent(model, [], config=c))
    terminal._loader.start()
    return terminal, out, model


def picture(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path)
    return path


def sent_text(model: ScriptedChatModel) -> str:
    return model.calls[-1][-1].text


@pytest.mark.parametrize("content", [b"just some notes", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_image_command_refuses_a_file_that_is_not_a_readable_image(chat, tmp_path, content):
    terminal, _, _ = chat
    fake = tmp_path / "notes.png"
    fake.write_bytes(content)
    with pytest.raises(ImageError, match=rf"'{fake}' is not attached: .*(not an image|corrupt)") as refused:
        terminal._run_command(f"/image {fake}")
    assert "; " in str(refused.value)  # and what to do
    assert terminal.pending_images == [] and terminal.prompt_text() == "you> "


def test_a_pasted_path_that_is_not_an_image_keeps_the_message(chat, tmp_path):
    terminal, out, model = chat
    fake = tmp_path / "notes.png"
    fake.write_text("just some notes")
    line = f"what is in {fake} ?"
    assert terminal.handle_line(line) is True
    assert f"error: '{fake}' is not attached: " in out.getvalue()
    assert terminal.draft == line and model.calls == []


def test_a_message_whose_attachment_fails_at_sending_keeps_the_text_and_the_other_attachments(chat, tmp_path):
    terminal, out, model = chat
    good, spoiled = picture(tmp_path / "good.png"), picture(tmp_path / "spoiled.png")
    terminal._run_command(f"/image {good}")
    terminal._run_command(f"/image {spoiled}")
    spoiled.write_text("overwritten after it was attached")
    assert terminal.turn("compare these two") is None
    assert f"'{spoiled}'" in out.getvalue() and "your message is kept" in out.getvalue()
    assert terminal.pending_images == [good] and terminal.draft == "compare these two"
    assert model.calls == []  # nothing was sent
    reply = terminal.turn(terminal.draft)
    assert reply.text == "First answer." and terminal.pending_images == []


def test_the_kept_message_is_offered_at_the_next_prompt(tmp_path, monkeypatch):
    from prompt_toolkit.application import create_app_session
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    config = load_config({"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False, "routing": "model"}},
                         environ={})  # fmt: skip
    model = ScriptedChatModel(replies=["First answer."])
    out = io.StringIO()
    terminal = TerminalChat(config, output=out, agent_factory=lambda c: MultimodalAgent(model, [], config=c))
    good, spoiled = picture(tmp_path / "good.png"), picture(tmp_path / "spoiled.png")
    attach = terminal._command_image

    def attach_then_spoil(rest: str) -> None:
        attach(rest)
        if rest == str(spoiled):
            spoiled.write_text("overwritten after it was attached")

    monkeypatch.setattr(terminal, "_command_image", attach_then_spoil)
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        keys.send_text(f"/image {good}\r/image {spoiled}\rcompare these\r\r/quit\r")  # the second Enter resends
        assert terminal.run() == 0
    assert [call[-1].text.split("\n")[0] for call in model.calls] == ["compare these"]
    assert "llava> First answer." in out.getvalue()


@pytest.mark.parametrize(
    "line, command",
    [
        ("/image cat.png", True),
        ("/quit", True),
        ("/dance", True),  # an unknown command, reported as one
        ("/home/me/My\\ Photos/cat.png what is this?", False),
        ("/tmp/nothere.png describe", False),
        ("/cat.png what is it", False),
        ("/C:\\photos describe", False),
        ("what is /image for?", False),
    ],
)
def test_commands_are_told_apart_from_paths(line, command):
    assert is_command(line, tuple(COMMANDS)) is command


def test_a_message_that_starts_with_a_path_is_sent(chat, tmp_path):
    terminal, out, model = chat
    photo = picture(tmp_path / "My Photos" / "cat.png")
    escaped = str(photo).replace(" ", "\\ ")
    terminal.handle_line(f"{escaped} what is this?")
    assert "unknown command" not in out.getvalue()
    human = model.calls[-1][-1]
    assert sent_text(model).startswith(f"{escaped} what is this?\n[attached image: ")
    assert any(isinstance(block, dict) and block.get("type") == "image" for block in human.content)

    terminal.handle_line("/tmp/nothere.png describe")
    assert sent_text(model) == "/tmp/nothere.png describe"
    assert "unknown command" not in out.getvalue()


def test_an_unknown_command_lists_the_commands(chat):
    terminal, out, model = chat
    with pytest.raises(InputError, match=r"unknown command '/dance'; the commands are /image, /video, .*/quit"):
        terminal._run_command("/dance")
    terminal.handle_line("/dance")
    assert "error: unknown command '/dance'" in out.getvalue() and model.calls == []


# ----- a closed output pipe ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, unbuffered",
    [(["config", "show"], False), (["config", "show"], True), (["--help"], False)],
    ids=["buffered", "unbuffered", "help"],
)
def test_a_reader_that_leaves_ends_the_command_quietly(data_dir, argv, unbuffered):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen([sys.executable, "-m", "agent.cli.main", *argv], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    process.stdout.close()  # like `| head -1` that has read its line: nothing reads any more
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == OUTPUT_CLOSED_EXIT == 141
    assert err == ""


def test_a_broken_pipe_elsewhere_is_still_reported(data_dir, monkeypatch, capsys):
    reader, writer = os.pipe()
    stdout = os.fdopen(writer, "w")
    monkeypatch.setattr(sys, "stdout", stdout)

    def fails(args):
        raise BrokenPipeError(32, "Broken pipe")  # a pipe to another process, not our output

    monkeypatch.setattr("agent.cli.main.cmd_tools", fails)
    try:
        assert main(["tools"]) == 1
    finally:
        stdout.close()
        os.close(reader)
    assert "error: unexpected BrokenPipeError" in capsys.readouterr().err


# ----- the server's port ------------------------------------------------------------------------


def test_serve_on_a_busy_port_is_one_clear_line(data_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "/models/none", "--no-agent"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: port {port} on 127.0.0.1 is already in use")
    assert "--port" in err[0] and "stop that process" in err[0]


@pytest.mark.parametrize("port", ["99999", "-1", "eighty"])
def test_an_impossible_port_is_a_usage_error(data_dir, capsys, port):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", port])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --port: {port!r} is not a port; give a number from 1 to 65535" in err
    assert "config" not in err


# ----- doctor's hints for missing models ---------------------------------------------------------


def test_doctor_names_the_missing_model_and_its_config_key(tmp_path, monkeypatch):
    from agent.cli.doctor import check_chat_model, check_tool_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config({"data_dir": str(tmp_path / "data"), "model": {"model": str(tmp_path / "no-llava")},
                          "tools": {"enabled": ["caption_image", "search_images", "generate_image"],
                                    "caption_model": str(tmp_path / "no-captioner"),
                                    "clip_model": "some-org/clip-not-downloaded",
                                    "image_model": "some-org/sd-not-downloaded"}}, environ={})  # fmt: skip
    checks = {check.name: check for check in [check_chat_model(config), *check_tool_models(config)]}
    expected = {
        "chat model": (str(tmp_path / "no-llava"), "model.model"),
        "caption model": (str(tmp_path / "no-captioner"), "tools.caption_model"),
        "CLIP model": ("some-org/clip-not-downloaded", "tools.clip_model"),
        "image model": ("some-org/sd-not-downloaded", "tools.image_model"),
    }
    for name, (model, key) in expected.items():
        check = checks[name]
        assert check.status == "missing", name
        assert repr(model) in check.detail and key in check.advice, check
        if name != "chat model":
            assert "llava" not in (check.detail + check.advice).lower(), check
    assert "`hf download some-org/clip-not-downloaded`" in checks["CLIP model"].advice
