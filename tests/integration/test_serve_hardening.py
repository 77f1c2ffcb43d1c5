"""The server through its real app: what remote callers learn of its folders, failures and first turns.

The agent runs a scripted chat model (no weights) with small tools that use the project's own
path checks and artifact writer; the app is the server's ``create_app`` driven by Starlette's
test client, as in ``test_serve_agent_routes.py``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.integration
pytest.importorskip("fastapi")

KEY_A = "hardening-key-a-" + "a" * 20
KEY_B = "hardening-key-b-" + "b" * 20


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _app(tmp_path: Path, keys: list[str], replies: list, *, serve: dict | None = None):
    """(client, agent, config): tools ``look`` (reads an image under the allowed folders) and ``draw`` (writes one)."""
    from fastapi.testclient import TestClient
    from langchain_core.tools import StructuredTool

    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import load_config
    from agent.core.files import read_allowed_image, write_new_artifact
    from agent.serve.app import create_app
    from agent.serve.security import ApiKeys
    from tests.scripted_chat_model import ScriptedChatModel

    images = tmp_path / "images"
    images.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (200, 30, 30)).save(images / "red.png")
    config = load_config({"data_dir": str(tmp_path / "data"),
                          "tools": {"allowed_dirs": [str(images), str(tmp_path / "data")]},
                          "agent": {"long_term_memory": False, "routing": "model", "tool_choice": None},
                          "serve": serve or {}}, environ={})  # fmt: skip

    def look(path: str) -> str:
        """Look at an image file."""
        image, _ = read_allowed_image(path, config.allowed_dirs, 1_000_000)
        return f"an image of {image.size[0]}x{image.size[1]} pixels"

    def draw(prompt: str) -> tuple[str, dict]:
        """Draw a picture."""
        picture = Image.new("RGB", (16, 16), (20, 20, 220))
        path = write_new_artifact(config.artifacts_dir, prompt, ".png", lambda handle: picture.save(handle, "PNG"))
        return f"Saved the picture to {path}.", {"path": str(path)}

    tools = [StructuredTool.from_function(look),
             StructuredTool.from_function(draw, response_format="content_and_artifact")]  # fmt: skip
    agent = MultimodalAgent(ScriptedChatModel(replies=replies), tools, config=config)
    app = create_app(config, keys=ApiKeys((k, "test") for k in keys), build_agent=lambda: agent, load_on_start=False)
    return TestClient(app, raise_server_exceptions=False), agent, config


def _turn(text: str, **fields) -> dict:
    return {"model": "llava-agent", "messages": [{"role": "user", "content": text}], **fields}


def _events(stream_text: str) -> list[dict]:
    lines = [line[6:] for line in stream_text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    return [chunk["llava_agent"]["event"] for chunk in map(json.loads, lines) if "event" in chunk.get("llava_agent", {})]


def _look_at(path: str) -> list:
    from langchain_core.messages import AIMessage

    from tests.scripted_chat_model import tool_call

    return [AIMessage("", tool_calls=[tool_call("look", {"path": path})]), "I could not open it."]


def test_a_tool_refusal_shows_remote_callers_no_server_folder(tmp_path):
    client, _, config = _app(tmp_path, [KEY_A], _look_at("../../../../../../etc/passwd") * 2)
    folders = [str(tmp_path / "images"), str(tmp_path / "data"), "'/etc/passwd'"]
    with client:
        streamed = client.post("/v1/chat/completions", headers={**_auth(KEY_A), "X-Thread-Id": "t1"},
                               json=_turn("look at ../../../../../../etc/passwd", stream=True))  # fmt: skip
        (result,) = [e for e in _events(streamed.text) if e["type"] == "tool_result"]
        history = client.get("/v1/agent/threads/t1", headers=_auth(KEY_A)).json()["messages"]
        (kept,) = [m for m in history if m["role"] == "tool"]
        for shown in (result["content"], kept["content"]):
            assert "outside the allowed folders" in shown and "'../../../../../../etc/passwd'" in shown
            assert not [folder for folder in folders if folder in shown], shown
            assert "resolves to" not in shown and "tools.allowed_dirs" not in shown
    # the one caller of a keyless server is the person at this machine: told all of it
    client, agent, _ = _app(tmp_path / "local", [], _look_at("../../../../../../etc/passwd"))
    with client:
        streamed = client.post("/v1/chat/completions", json=_turn("look", stream=True))
        (result,) = [e for e in _events(streamed.text) if e["type"] == "tool_result"]
        assert "resolves to '/etc/passwd'" in result["content"] and str(tmp_path / "local" / "images") in result["content"]


def test_a_caller_cannot_read_another_caller_s_picture_by_its_path(tmp_path):
    from langchain_core.messages import AIMessage

    from tests.scripted_chat_model import tool_call

    drawing = [AIMessage("", tool_calls=[tool_call("draw", {"prompt": "my secret boat"})]), "Done."]
    client, _, config = _app(tmp_path, [KEY_A, KEY_B], [*drawing, "Hello."])
    with client:
        made = client.post("/v1/chat/completions", headers=_auth(KEY_A), json=_turn("Draw my secret boat"))
        (picture,) = made.json()["llava_agent"]["files"]
        path = config.artifacts_dir / picture["filename"]
        assert path.is_file()  # named for people, with a random part: not guessable from the time and the prompt
        assert re.fullmatch(r"\d{8}-\d{6}-my-secret-boat-[0-9a-f]{16}\.png", picture["filename"])
        for url in (path.as_uri(), str(path), str(tmp_path / "images" / ".." / "data" / "serve.sqlite")):
            sent = {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                {"type": "image_url", "image_url": {"url": url}}]}  # fmt: skip
            refused = client.post("/v1/chat/completions", headers={**_auth(KEY_B), "X-Thread-Id": "b1"},
                                  json={"model": "llava-agent", "messages": [sent]})  # fmt: skip
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "path_not_allowed"
            assert "is outside the folders this server reads images from" in refused.json()["error"]["message"]
        assert client.get("/v1/agent/threads", headers=_auth(KEY_B)).json()["data"] == []
        # images of the allowed folders outside the data folder are still read by path
        sent = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(tmp_path / "images" / "red.png")}}]}
        assert client.post("/v1/chat/completions", headers=_auth(KEY_B),
                           json={"model": "llava-agent", "messages": [sent]}).status_code == 200  # fmt: skip


def _explode(messages):
    raise RuntimeError("the model exploded")


def test_an_internal_error_keeps_its_request_id_and_headers(tmp_path, caplog):
    from agent.serve.request_context import RequestIdFilter

    client, _, _ = _app(tmp_path, [KEY_A], [_explode])
    caplog.handler.addFilter(RequestIdFilter())
    with client, caplog.at_level(logging.ERROR, logger="agent.serve"):
        failed = client.post("/v1/chat/completions", headers={**_auth(KEY_A), "X-Request-Id": "my-req-1"},
                             json=_turn("hello"))  # fmt: skip
    assert failed.status_code == 500
    assert failed.json()["error"]["message"] == "internal error (request my-req-1); the server log has the details"
    assert "exploded" not in failed.text
    headers = failed.headers
    assert headers["x-request-id"] == "my-req-1" and headers["x-should-retry"] == "false"
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("request failed")]
    assert logged.request_id == "my-req-1" and logged.exc_info is not None


def test_a_failed_first_turn_leaves_no_thread_behind(tmp_path):
    client, agent, _ = _app(tmp_path, [KEY_A], [_explode, "Hello again."])
    with client:
        failed = client.post("/v1/chat/completions", headers={**_auth(KEY_A), "X-Thread-Id": "fresh"},
                             json=_turn("hello there"))  # fmt: skip
        assert failed.status_code == 500
        assert client.get("/v1/agent/threads", headers=_auth(KEY_A)).json()["data"] == []
        assert client.get("/v1/agent/threads/fresh", headers=_auth(KEY_A)).status_code == 404
        assert agent.conversations.list_threads() == []
        state = client.app.state.server
        assert state.store.threads_of(state.keys.caller(KEY_A)) == []
        # the same key works afterwards: the thread starts with the turn that succeeds
        again = client.post("/v1/chat/completions", headers={**_auth(KEY_A), "X-Thread-Id": "fresh"},
                            json=_turn("hello there"))  # fmt: skip
        assert again.status_code == 200 and again.headers["x-thread-id"] == "fresh"
        listed = client.get("/v1/agent/threads", headers=_auth(KEY_A)).json()["data"]
        assert [(t["id"], t["title"]) for t in listed] == [("fresh", "hello there")]
        roles = [m["role"] for m in client.get("/v1/agent/threads/fresh", headers=_auth(KEY_A)).json()["messages"]]
        assert roles == ["user", "assistant"]


def test_a_first_turn_refused_by_a_full_queue_leaves_no_thread_behind(tmp_path):
    release = threading.Event()

    def hold(messages):
        release.wait(30)
        return "Done."

    client, agent, _ = _app(tmp_path, [KEY_A], [hold], serve={"max_queue": 0})
    with client:
        holding = threading.Thread(target=lambda: client.post(
            "/v1/chat/completions", headers={**_auth(KEY_A), "X-Thread-Id": "busy"}, json=_turn("hold on")))
        holding.start()
        try:
            state = client.app.state.server
            for _ in range(600):
                if state.queue.active:
                    break
                threading.Event().wait(0.05)
            refused = client.post("/v1/chat/completions", headers={**_auth(KEY_A), "X-Thread-Id": "fresh"},
                                  json=_turn("hello there"))  # fmt: skip
            assert refused.status_code == 429
            refused = client.post("/v1/chat/completions", headers=_auth(KEY_A), json=_turn("no key at all"))
            assert refused.status_code == 429
        finally:
            release.set()
            holding.join(30)
        listed = client.get("/v1/agent/threads", headers=_auth(KEY_A)).json()["data"]
        assert [t["id"] for t in listed] == ["busy"]
        assert [key for key, _ in state.store.threads_of(state.keys.caller(KEY_A))] == ["busy"]
        assert [t.title for t in agent.conversations.list_threads()] == ["hold on"]
