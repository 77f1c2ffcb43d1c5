"""One writer per conversation thread across processes: nothing is silently lost, the loser is told why."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.app.multimodal_agent import MultimodalAgent
from agent.core.config import load_config
from memory.conversations import ConversationStore
from memory.thread_lease import ThreadBusyError, hold_thread, lease_folder
from tests.scripted_chat_model import ScriptedChatModel

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def settings(data_dir: Path) -> dict:
    return {"data_dir": str(data_dir), "agent": {"long_term_memory": False}, "tools": {"enabled": []}}


def start_holder(db: Path, thread_id: str) -> subprocess.Popen:
    """Another process holding ``thread_id`` (as an open chat does), until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from memory.thread_lease import hold_thread, lease_folder
        lease = hold_thread(lease_folder({str(db)!r}), {thread_id!r})
        print("held", flush=True)
        time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.fixture
def holder(tmp_path):
    processes = []

    def hold(db: Path, thread_id: str) -> subprocess.Popen:
        processes.append(start_holder(db, thread_id))
        return processes[-1]

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_a_thread_held_elsewhere_is_refused_then_free_when_that_process_dies(tmp_path, holder):
    db = tmp_path / "data" / "conversations.sqlite"
    process = holder(db, "t1")
    with pytest.raises(ThreadBusyError) as caught:
        hold_thread(lease_folder(db), "t1")
    message = str(caught.value)
    assert "conversation t1 is open in another process" in message and f"process {process.pid}" in message
    assert "llava-agent threads show t1" in message
    hold_thread(lease_folder(db), "t2").release()  # other threads are free
    process.kill()
    process.wait()
    hold_thread(lease_folder(db), "t1").release()  # the OS released the dead process's lease


WRITER = textwrap.dedent("""
    import sys, time
    from agent.core.config import load_config
    from agent.app.multimodal_agent import MultimodalAgent
    from memory.thread_lease import ThreadBusyError
    from tests.scripted_chat_model import ScriptedChatModel

    data_dir, thread_id, name, turns, barrier = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    config = load_config({"data_dir": data_dir, "agent": {"long_term_memory": False}, "tools": {"enabled": []}},
                         environ={})
    model = ScriptedChatModel(replies=["fine thanks " * 5], token_delay_s=0.002)
    agent = MultimodalAgent(model, [], config=config)
    # start together: each writer announces itself, then waits for the other (slow start-ups under load)
    from pathlib import Path
    Path(barrier, name).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(barrier).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    busy = 0
    for index in range(turns):
        while True:
            try:
                agent.chat(f"{name}-{index}", thread_id=thread_id)
                break
            except ThreadBusyError:
                busy += 1
                time.sleep(0.005)
    print(busy)
""")


def test_two_processes_writing_one_thread_lose_no_turn(tmp_path):
    data_dir = tmp_path / "data"
    config = load_config(settings(data_dir), environ={})
    with ConversationStore(config.conversations_db) as store:
        thread_id = store.new_thread("shared").thread_id
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    turns = 25
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(data_dir), thread_id, name, str(turns), str(barrier)], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    outputs = [w.communicate(timeout=240) for w in writers]
    assert all(w.returncode == 0 for w in writers), outputs
    with ConversationStore(config.conversations_db) as store:
        said = [m.text for m in store.messages(thread_id) if m.type == "human"]
    assert sorted(said) == sorted(f"{name}-{i}" for name in ("a", "b") for i in range(turns))
    assert sum(int(out.strip()) for out, _ in outputs) > 0, "the writers did meet (and waited) at least once"


def test_ask_on_a_thread_open_elsewhere_fails_with_one_clear_line(tmp_path, holder, monkeypatch, capsys):
    from agent.cli.main import main

    data_dir = tmp_path / "data"
    monkeypatch.setenv("LLAVA_AGENT_DATA_DIR", str(data_dir))
    config = load_config(settings(data_dir), environ={})
    with ConversationStore(config.conversations_db) as store:
        thread_id = store.new_thread("busy").thread_id
    holder(config.conversations_db, thread_id)
    monkeypatch.setattr(MultimodalAgent, "from_config",
                        staticmethod(lambda c, **k: MultimodalAgent(ScriptedChatModel(), [], config=c)))
    assert main(["ask", "hello", "--thread", thread_id]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: conversation {thread_id} is open in another process")
    assert main(["threads", "delete", thread_id]) == 1
    assert "is open in another process" in capsys.readouterr().err
    assert main(["threads", "show", thread_id]) == 0, "reading needs no lease"


def test_the_chat_holds_its_thread_and_opens_a_busy_one_read_only(tmp_path, holder):
    from agent.cli.terminal import TerminalChat

    config = load_config(settings(tmp_path / "data"), environ={})
    out = io.StringIO()
    model = ScriptedChatModel(replies=["first answer", "second answer"])
    chat = TerminalChat(config, output=out, agent_factory=lambda c: MultimodalAgent(model, [], config=c))
    chat._loader.start()
    mine = chat.turn("hello").thread_id
    other = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from memory.thread_lease import hold_thread, lease_folder
        hold_thread(lease_folder({str(config.conversations_db)!r}), {mine!r})
    """)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert other.returncode == 1 and "is open in another process" in other.stderr, "the open chat holds its thread"
    busy = ConversationStore(config.conversations_db).new_thread("elsewhere").thread_id
    holder(config.conversations_db, busy)
    chat._run_command(f"/resume {busy}")
    assert chat.read_only and f"(read-only) conversation {busy} is open in another process" in out.getvalue()
    assert chat.turn("may I write?") is None
    assert f"error: conversation {busy} is open in another process" in out.getvalue()
    chat._run_command("/new")
    assert not chat.read_only and chat.turn("a new conversation").thread_id not in (mine, busy)


def test_two_turns_of_one_process_on_one_thread_cannot_overlap(tmp_path):
    config = load_config(settings(tmp_path / "data"), environ={})
    agent = MultimodalAgent(ScriptedChatModel(replies=["a long answer " * 20], token_delay_s=0.01), [], config=config)
    thread_id = agent.chat("first").thread_id
    events = agent.stream("second", thread_id=thread_id)
    next(events)  # the second turn is running
    with pytest.raises(ThreadBusyError, match="a turn is already running"):
        agent.chat("third", thread_id=thread_id)
    events.close()
    agent.chat("fourth", thread_id=thread_id)
