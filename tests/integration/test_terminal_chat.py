"""The terminal chat in a real pseudo-terminal (pexpect) on a tiny random ChatLlava.

Session one: an image message, a (forced) tool call shown as it happens, streamed output,
/threads, /new, /quit. Session two, a new process on the same data: the thread is listed and
resumed, then a long generation in a new thread is interrupted with Ctrl-C, and the session
carries on. Every prompt the model gets is the same on every run (greedy decoding, seed 0, the
data folder at a fixed path): the long story is asked in a thread of its own because a resumed
thread holds the time-stamped name of the first session's audio file, and a random model given
a different prompt may end its reply before Ctrl-C arrives.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PROMPT = "you>"


def spawn_chat(config: Path, data_dir: Path) -> pexpect.spawn:
    env = {**os.environ, "LLAVA_AGENT_DATA_DIR": str(data_dir), "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # A shell that starts a job in the background (`cmd &`) makes it ignore SIGINT, and the chat would
    # inherit that and never see Ctrl-C: the child gets the default disposition, as in a terminal.
    child = pexpect.spawn(sys.executable, ["-m", "agent.cli.main", "--config", str(config), "chat"], cwd=str(ROOT),
                          env=env, encoding="utf-8", timeout=180, dimensions=(50, 200),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return child


def write_config(path: Path, checkpoint: Path, **sections: dict) -> Path:
    lines = [f'[model]\nmodel = "{checkpoint}"\ntemperature = 0.0\nseed = 0']
    lines += [f"{k} = {v}" for k, v in sections.get("model", {}).items()]
    lines.append(f"[tools]\nenabled = {sections.get('tools', ['speak'])!r}".replace("'", '"'))
    lines.append("[agent]\nlong_term_memory = false\nrecursion_limit = 4")
    lines += [f"{k} = {v}" for k, v in sections.get("agent", {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_terminal_chat_in_a_pty(tmp_path, fixed_workdir, tiny_llava_qwen2):
    from PIL import Image

    data_dir = fixed_workdir / "data"  # the attached image's path is in the prompt: the same on every run
    picture = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (220, 20, 20)).save(picture)
    tool_config = write_config(tmp_path / "tool.toml", tiny_llava_qwen2, model={"max_new_tokens": 96},
                               agent={"tool_choice": '"speak"'})

    chat = spawn_chat(tool_config, data_dir)
    chat.expect(PROMPT)
    chat.sendline(f"/image {picture}")
    chat.expect("attached")
    chat.expect(r"you \[1 image\]>")
    chat.sendline("Read this out, please.")
    chat.expect(r"\[tool\] speak \{\"text\": ")  # the call is shown when it starts
    outcome = chat.expect(
        [r"\[tool done\] speak: Saved [0-9.]+ s of speech to (\S+\.wav)", r"\[tool error\] speak: ([^\r\n]*)"]
    )
    assert outcome == 0, f"the speak tool failed: {chat.match.group(1)}"
    assert Path(chat.match.group(1).rstrip(".")).is_file()
    chat.expect("llava> ")  # then the answer streams
    chat.expect(PROMPT)
    chat.sendline("/threads")
    chat.expect(r"\* ([0-9a-f]{8})  \S+ \S+  Read this out, please\.")
    thread_id = chat.match.group(1)
    chat.expect(PROMPT)
    chat.sendline("/new")
    chat.expect("new conversation")
    chat.expect(PROMPT)
    chat.sendline(f"/image {tmp_path / 'missing.png'}")
    chat.expect(r"error: image '.*missing\.png' does not exist or is not a file; check the path")
    chat.expect(PROMPT)
    chat.sendline("/quit")
    chat.expect("bye")
    chat.expect(pexpect.EOF)

    # a new process: the thread is still there; a long reply is stopped with Ctrl-C
    long_config = write_config(tmp_path / "long.toml", tiny_llava_qwen2, model={"max_new_tokens": 700}, tools=[])
    chat = spawn_chat(long_config, data_dir)
    chat.expect(PROMPT)
    chat.sendline("/threads")
    chat.expect(thread_id)
    chat.expect(PROMPT)
    chat.sendline(f"/resume {thread_id}")
    chat.expect(rf"resumed {thread_id}: Read this out, please\. \(\d+ messages\)")
    chat.expect(PROMPT)
    chat.sendline("/new")
    chat.expect("new conversation")
    chat.expect(PROMPT)
    chat.sendline(str(picture))  # a pasted path attaches the image
    chat.expect(f"attached {picture}; type your message")
    chat.expect(r"you \[1 image\]>")
    chat.sendline("Now tell me a very long story.")
    chat.expect("llava> ")
    chat.expect(r"[\s\S]{60}")  # tokens are arriving
    interrupted_at = time.monotonic()
    chat.sendcontrol("c")
    chat.expect(r"\[stopped\]", timeout=30)
    assert time.monotonic() - interrupted_at < 30
    chat.expect(PROMPT)
    chat.sendline("/threads")
    chat.expect(r"\* ([0-9a-f]{8})  \S+ \S+  Now tell me a very long story\.")
    story_id = chat.match.group(1)
    chat.expect(thread_id)
    chat.expect(PROMPT)
    chat.sendline("/help")
    chat.expect("Ctrl-C stops the reply")
    chat.expect(PROMPT)
    chat.sendline("/quit")
    chat.expect(pexpect.EOF)
    chat.close()
    assert chat.exitstatus == 0

    from agent.core.config import load_config
    from memory.conversations import ConversationStore

    with ConversationStore(load_config({"data_dir": str(data_dir)}, environ={}).conversations_db) as store:
        messages = store.messages(story_id)
    kinds = [m.type for m in messages]
    assert kinds == ["human", "ai"]
    assert messages[-2].text.startswith("Now tell me a very long story.\n[attached image: ")
    assert re.search(r"\S", messages[-1].text), "the partial reply is kept in the thread"
    from transformers import AutoTokenizer

    generated = len(AutoTokenizer.from_pretrained(tiny_llava_qwen2)(messages[-1].text)["input_ids"])
    assert generated < 650, f"Ctrl-C stopped the reply early ({generated} of up to 700 tokens)"
