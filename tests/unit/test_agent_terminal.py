"""Terminal chat pieces without a terminal: commands, turn printing, pasted paths, inline images."""

from __future__ import annotations

import base64
import io

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from agent.app.multimodal_agent import MultimodalAgent
from agent.cli.terminal import TerminalChat, split_image_paths
from agent.cli.terminal_media import inline_image_escape, inline_image_protocol
from agent.core.config import load_config
from agent.core.errors import ImageError, InputError
from tests.scripted_chat_model import ScriptedChatModel, tool_call


@tool(response_format="content_and_artifact")
def generate_image(prompt: str) -> tuple[str, dict]:
    """Make an image."""
    from PIL import Image

    path = generated_path
    Image.new("RGB", (4, 4), (0, 0, 255)).save(path)
    return f"Saved the generated image to {path}.", {"path": str(path)}


generated_path = None


@pytest.fixture
def chat(tmp_path):
    global generated_path
    generated_path = tmp_path / "generated.png"
    config = load_config({"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False, "routing": "model"}}, environ={})
    model = ScriptedChatModel(replies=[
        AIMessage("", tool_calls=[tool_call("generate_image", {"prompt": "a boat"})]),
        "Here is your boat.",
        "Second thread answer.",
    ])
    out = io.StringIO()
    terminal = TerminalChat(config, output=out, agent_factory=lambda c: MultimodalAgent(model, [generate_image], config=c))
    terminal._loader.start()
    return terminal, out, model


def test_a_turn_prints_tool_calls_results_and_streamed_tokens(chat):
    terminal, out, _ = chat
    reply = terminal.turn("draw a boat")
    text = out.getvalue()
    assert text.index('[tool] generate_image {"prompt": "a boat"}') < text.index("[tool done] generate_image")
    assert f"  image: {generated_path}" in text  # no inline protocol on a StringIO
    assert text.rstrip().endswith("llava> Here is your boat.")
    assert terminal.thread_id == reply.thread_id


@tool(response_format="content_and_artifact")
def generate_video(prompt: str) -> tuple[str, dict]:
    """Make a clip."""
    from PIL import Image

    sheet = generated_path.with_name("clip-sheet.png")
    Image.new("RGB", (8, 4), (0, 255, 0)).save(sheet)
    clip = generated_path.with_name("clip.mp4")
    clip.write_bytes(b"not shown")
    return f"Saved a clip to {clip}.", {"path": str(clip), "preview": str(sheet)}


def test_a_videos_contact_sheet_is_shown_in_place_of_the_video(tmp_path):
    global generated_path
    generated_path = tmp_path / "generated.png"
    config = load_config({"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False, "routing": "model"}}, environ={})
    model = ScriptedChatModel(replies=[AIMessage("", tool_calls=[tool_call("generate_video", {"prompt": "a boat"})]), "Done."])
    out = io.StringIO()
    terminal = TerminalChat(config, output=out, agent_factory=lambda c: MultimodalAgent(model, [generate_video], config=c))
    terminal._loader.start()
    terminal.turn("animate a boat")
    assert f"  image: {tmp_path / 'clip-sheet.png'}" in out.getvalue()


def test_new_threads_and_resume(chat):
    terminal, out, _ = chat
    first = terminal.turn("draw a boat").thread_id
    terminal._run_command("/new")
    assert terminal.thread_id is None
    second = terminal.turn("something else").thread_id
    assert second != first
    terminal._run_command("/threads")
    listing = out.getvalue().split("new conversation")[-1]
    assert f"* {second}" in listing and f"  {first}" in listing
    terminal._run_command(f"/resume {first}")
    assert terminal.thread_id == first
    assert f"resumed {first}: draw a boat (4 messages)" in out.getvalue()
    with pytest.raises(InputError, match="unknown thread 'nope'"):
        terminal._run_command("/resume nope")


def test_commands_validate_their_arguments(chat, tmp_path):
    terminal, out, _ = chat
    assert terminal._run_command("/quit") is False
    with pytest.raises(ImageError, match="does not exist"):
        terminal._run_command(f"/image {tmp_path / 'missing.png'}")
    with pytest.raises(InputError, match="/speak takes on or off"):
        terminal._run_command("/speak loud")
    with pytest.raises(InputError, match="speak tool is not enabled"):
        terminal._run_command("/speak on")
    with pytest.raises(InputError, match="unknown command '/dance'"):
        terminal._run_command("/dance")
    terminal._run_command("/tools")
    assert "  generate_image: Make an image." in out.getvalue()
    terminal._run_command("/help")
    assert "/resume ID" in out.getvalue()


def test_attached_images_go_with_the_next_message(chat, tmp_path):
    from PIL import Image

    terminal, _, model = chat
    picture = tmp_path / "photo.png"
    Image.new("RGB", (4, 4)).save(picture)
    terminal._run_command(f"/image {picture}")
    assert terminal.prompt_text() == "you [1 image]> "
    terminal.turn("draw a boat like this")
    assert terminal.pending_images == []
    human = model.calls[0][1]
    assert any(isinstance(b, dict) and b.get("type") == "image" for b in human.content)


def test_pasted_paths_are_found(tmp_path):
    from PIL import Image

    picture = tmp_path / "my photo.png"
    Image.new("RGB", (4, 4)).save(picture)
    assert split_image_paths(f"'{picture}'") == ([picture], [])
    assert split_image_paths(f"what is in '{picture}' ?") == ([picture], ["what", "is", "in", "?"])
    assert split_image_paths("no /such/file.png here") == ([], ["no", "/such/file.png", "here"])


@pytest.mark.parametrize(
    "environ, expected",
    [({"KITTY_WINDOW_ID": "1"}, "kitty"), ({"TERM": "xterm-kitty"}, "kitty"), ({"TERM_PROGRAM": "iTerm.app"}, "iterm2"),
     ({"TERM_PROGRAM": "WezTerm"}, "iterm2"), ({"TERM": "xterm-256color"}, None), ({}, None)],
)
def test_inline_image_protocol_detection(environ, expected):
    assert inline_image_protocol(environ) == expected


def test_inline_image_escapes(tmp_path):
    from PIL import Image

    png = tmp_path / "x.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png)
    iterm = inline_image_escape(png, "iterm2")
    assert iterm.startswith("\x1b]1337;File=") and ";inline=1:" in iterm and iterm.endswith("\x07\n")
    assert base64.b64decode(iterm.split(":", 1)[1].rstrip("\x07\n")) == png.read_bytes()
    jpeg = tmp_path / "x.jpg"
    Image.new("RGB", (64, 64)).save(jpeg)
    kitty = inline_image_escape(jpeg, "kitty")
    assert kitty.startswith("\x1b_Ga=T,f=100,") and kitty.endswith("\x1b\\\n")
    payload = "".join(part.split(";", 1)[1] for part in kitty.strip().split("\x1b\\") if part)
    assert base64.b64decode(payload).startswith(b"\x89PNG")


def test_speak_on_reads_replies_aloud_with_espeak(tmp_path, monkeypatch):
    from tools import build_tools

    config = load_config({"data_dir": str(tmp_path / "data"), "tools": {"enabled": ["speak"]},
                          "agent": {"long_term_memory": False, "routing": "model"}}, environ={})
    model = ScriptedChatModel(replies=["Hello from the speaker."])
    out = io.StringIO()
    monkeypatch.setattr("agent.cli.terminal.find_audio_player", lambda: None)  # no sound card in tests
    terminal = TerminalChat(config, output=out,
                            agent_factory=lambda c: MultimodalAgent(model, build_tools(c), config=c))
    terminal._loader.start()
    terminal._run_command("/speak on")
    assert "speak on (no audio player found; audio files are saved only)" in out.getvalue()
    terminal.turn("say hi")
    spoken = [line.split("audio: ", 1)[1] for line in out.getvalue().splitlines() if "audio: " in line]
    assert len(spoken) == 1 and open(spoken[0], "rb").read(4) == b"RIFF"
    terminal._run_command("/speak off")
    terminal.turn("again")
    assert out.getvalue().count("audio: ") == 1


def test_memories_command_needs_long_term_memory(chat):
    terminal, _, _ = chat
    with pytest.raises(InputError, match="long-term memory is off"):
        terminal._run_command("/memories")


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("plain text\nnext line\tindented", "plain text\nnext line\tindented"),
        ("bell\x07 escape\x1b[2J", "bell\\x07 escape\\x1b[2J"),
        ("c1 csi\x9b31m del\x7f", "c1 csi\\x9b31m del\\x7f"),
        ("carriage\rreturn", "carriage\\x0dreturn"),
        ("line\u2028separator", "line\\u2028separator"),
        ("unicode stays: é 猫 🙂", "unicode stays: é 猫 🙂"),
    ],
)
def test_model_text_cannot_drive_the_terminal(raw, shown):
    from agent.cli.terminal import terminal_safe

    assert terminal_safe(raw) == shown
