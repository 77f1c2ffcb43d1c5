"""The conversation store: threads, titles, rename, delete, and clear errors for unknown ones."""

from __future__ import annotations

import pytest

from agent.core.errors import InputError, StoreError
from memory.conversations import TITLE_LENGTH, ConversationStore, title_from_message


@pytest.fixture
def store(tmp_path):
    with ConversationStore(tmp_path / "conversations.sqlite") as opened:
        yield opened


def test_new_threads_are_listed_most_recent_first(store):
    first = store.new_thread("first")
    second = store.new_thread("second")
    store.touch(first.thread_id, "ignored: the title is already set")
    assert [t.thread_id for t in store.list_threads()] == [first.thread_id, second.thread_id]
    assert store.get(first.thread_id).title == "first"


def test_touch_creates_a_thread_titled_by_its_first_message(store):
    store.touch("custom-id", "Plan a trip\nto Lisbon   in May")
    store.touch("custom-id", "second message")
    assert store.get("custom-id").title == "Plan a trip to Lisbon in May"
    untitled = store.new_thread()  # created before its first message (agent.new_thread())
    store.touch(untitled.thread_id, "Name the birds in this photo")
    store.touch(untitled.thread_id, "and the trees")
    assert store.get(untitled.thread_id).title == "Name the birds in this photo"


def test_titles_are_one_bounded_line():
    title = title_from_message("word " * 100)
    assert len(title) == TITLE_LENGTH and title.endswith("…") and "\n" not in title


def test_rename_and_delete(store):
    info = store.new_thread("old")
    assert store.rename(info.thread_id, "  new   title ").title == "new title"
    assert store.get(info.thread_id).title == "new title"
    with pytest.raises(InputError, match="cannot be empty"):
        store.rename(info.thread_id, "   ")
    store.delete(info.thread_id)
    assert store.list_threads() == []


def test_unknown_and_ambiguous_threads(store):
    with pytest.raises(InputError) as excinfo:
        store.get("nope")
    assert str(excinfo.value) == (
        "unknown thread 'nope'; list the threads with `llava-agent threads` (or /threads in the chat)"
    )
    with pytest.raises(InputError, match="unknown thread"):
        store.delete("nope")
    with pytest.raises(InputError, match="unknown thread"):
        store.messages("nope")
    store.touch("abc1", "x")
    store.touch("abc2", "y")
    with pytest.raises(InputError, match="ambiguous"):
        store.get("abc")
    assert store.get("abc1").thread_id == "abc1"
    store.touch("50%_x", "z")
    with pytest.raises(InputError, match="unknown thread"):
        store.get("5_")  # LIKE wildcards are taken literally


def test_unique_prefix_resolves(store):
    info = store.new_thread("t")
    assert store.get(info.thread_id[:3]).thread_id == info.thread_id


def test_a_thread_without_turns_has_no_messages(store):
    info = store.new_thread("empty")
    assert store.messages(info.thread_id) == []


def test_unopenable_database_is_a_store_error(tmp_path):
    target = tmp_path / "not-a-db.sqlite"
    target.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as excinfo:
        ConversationStore(target)
    assert str(target) in str(excinfo.value) and "cannot be opened" in str(excinfo.value)


def test_latest_checkpoint_cache_sees_writes_from_another_store(tmp_path):
    """A second store (as another process would) writing the thread invalidates the first one's cache."""
    from langchain_core.messages import AIMessage

    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import load_config
    from tests.scripted_chat_model import ScriptedChatModel

    config = load_config({"data_dir": str(tmp_path), "agent": {"long_term_memory": False}}, environ={})
    first = MultimodalAgent(ScriptedChatModel(replies=["one", "three"]), [], config=config)
    second = MultimodalAgent(ScriptedChatModel(replies=["two"]), [], config=config)
    thread = first.chat("a").thread_id
    second.chat("b", thread_id=thread)
    model = first.model
    first.chat("c", thread_id=thread)
    assert [m.text for m in model.calls[-1][1:]] == ["a", "one", "b", "two", "c"]
    assert [m.text for m in first.history(thread)] == ["a", "one", "b", "two", "c", "three"]
    assert isinstance(first.history(thread)[-1], AIMessage)


def _rows(path, thread_id: str) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(path) as connection:
        return {
            table: connection.execute(f"SELECT COUNT(*) FROM {table} WHERE thread_id = ?", (thread_id,)).fetchone()[0]
            for table in ("checkpoints", "writes", "llava_agent_threads")
        }


def _file_bytes(path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))  # the database, its -wal and -shm


def test_deleting_a_thread_with_turns_removes_every_row_and_its_words(tmp_path):
    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import load_config
    from tests.scripted_chat_model import ScriptedChatModel

    config = load_config({"data_dir": str(tmp_path), "agent": {"long_term_memory": False}}, environ={})
    agent = MultimodalAgent(ScriptedChatModel(replies=["gone-reply-7f3a", "kept-reply-91c2"]), [], config=config)
    doomed = agent.chat("doomed-question-5e1b").thread_id
    kept = agent.chat("kept-question-c0d4").thread_id
    store = agent.conversations
    latest = store.checkpointer.get_tuple({"configurable": {"thread_id": doomed}}).config
    store.checkpointer.put_writes(latest, [("messages", "pending-write-2b9e")], task_id="task-1")
    database = config.conversations_db
    before = _rows(database, doomed)
    assert all(count > 0 for count in before.values()), before
    kept_rows = _rows(database, kept)
    assert b"gone-reply-7f3a" in _file_bytes(database) and b"pending-write-2b9e" in _file_bytes(database)

    store.delete(doomed[:5])

    assert _rows(database, doomed) == dict.fromkeys(before, 0)
    assert _rows(database, kept) == kept_rows
    contents = _file_bytes(database)
    for words in (b"doomed-question-5e1b", b"gone-reply-7f3a", b"pending-write-2b9e"):
        assert words not in contents, f"{words!r} is still in the database file after the delete"
    assert b"kept-question-c0d4" in contents
    assert [m.text for m in store.messages(kept)] == ["kept-question-c0d4", "kept-reply-91c2"]
    with pytest.raises(InputError, match="unknown thread"):
        store.messages(doomed)
    assert agent.graph.get_state({"configurable": {"thread_id": doomed}}).values == {}, "no cached copy survives"
