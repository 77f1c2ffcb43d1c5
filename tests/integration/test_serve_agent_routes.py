"""The agent's JSON routes (threads, tools, memories) and the chat page's files, through the real app.

The agent runs a scripted chat model (no weights) over the real SQLite stores; the app is the
server's own ``create_app`` driven by Starlette's test client. Ownership rules: each key sees and
changes its own threads only; a keyless server's one caller sees every thread of the database.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.integration
pytest.importorskip("fastapi")

KEY_A = "route-key-a-" + "a" * 20
KEY_B = "route-key-b-" + "b" * 20


def _app(tmp_path: Path, keys: list[str], *, ui: bool = True):
    from fastapi.testclient import TestClient
    from langchain_core.messages import AIMessage
    from langchain_core.tools import StructuredTool

    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import load_config
    from agent.serve.app import create_app
    from agent.serve.security import ApiKeys
    from tests.scripted_chat_model import ScriptedChatModel, tool_call

    images = tmp_path / "images"
    images.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (80, 60), (200, 30, 30)).save(images / "hit.png")
    config = load_config({"data_dir": str(tmp_path / "data"), "tools": {"allowed_dirs": [str(images)]},
                          "agent": {"long_term_memory": False}, "serve": {"ui": ui}}, environ={})  # fmt: skip

    def search(query: str) -> tuple[str, dict]:
        """Search the indexed images."""
        return "1 hit", {"results": [{"path": str(images / "hit.png"), "score": 0.5, "caption": "a <b>red</b> one"}]}

    tool = StructuredTool.from_function(search, name="search", response_format="content_and_artifact")
    model = ScriptedChatModel(replies=[AIMessage("", tool_calls=[tool_call("search", {"query": "red"})]), "Found it."])
    agent = MultimodalAgent(model, [tool], config=config)
    app = create_app(config, keys=ApiKeys((k, "test") for k in keys), build_agent=lambda: agent, load_on_start=False)
    return TestClient(app), agent


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_each_key_sees_and_changes_only_its_own_threads(tmp_path):
    client, agent = _app(tmp_path, [KEY_A, KEY_B])
    with client:
        assert client.get("/v1/agent/threads").status_code == 401
        made = client.post("/v1/agent/threads", json={"title": "mine"}, headers=_auth(KEY_A))
        assert made.status_code == 201
        thread = made.json()["id"]
        listed = client.get("/v1/agent/threads", headers=_auth(KEY_A)).json()["data"]
        assert [(t["id"], t["title"]) for t in listed] == [(thread, "mine")]
        assert client.get("/v1/agent/threads", headers=_auth(KEY_B)).json()["data"] == []
        for method in ("get", "patch", "delete"):
            kwargs = {"json": {"title": "theirs"}} if method == "patch" else {}
            stranger = getattr(client, method)(f"/v1/agent/threads/{thread}", headers=_auth(KEY_B), **kwargs)
            assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "thread_not_found"
        renamed = client.patch(f"/v1/agent/threads/{thread}", json={"title": "  new   name "}, headers=_auth(KEY_A))
        assert renamed.json()["title"] == "new name"
        bad = client.patch(f"/v1/agent/threads/{thread}", json={"title": 5}, headers=_auth(KEY_A))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "title"
        assert client.patch(f"/v1/agent/threads/{thread}", json={"title": " "}, headers=_auth(KEY_A)).status_code == 400
        assert client.delete(f"/v1/agent/threads/{thread}", headers=_auth(KEY_A)).json()["deleted"] is True
        assert client.get("/v1/agent/threads", headers=_auth(KEY_A)).json()["data"] == []
        assert not agent.conversations.exists(thread)
        assert client.get(f"/v1/agent/threads/{thread}", headers=_auth(KEY_A)).status_code == 404
        # memory is never offered on a server with keys: its facts would be shared by every key
        refused = client.get("/v1/agent/memories", headers=_auth(KEY_A))
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "memory_unavailable"
        tools = client.get("/v1/agent/tools", headers=_auth(KEY_A)).json()
        assert [t["name"] for t in tools["data"]] == ["search"] and tools["memory"] is False
        assert tools["data"][0]["parameters"]["properties"]["query"]["type"] == "string"


def test_the_keyless_caller_sees_every_thread_with_its_history_and_files(tmp_path):
    client, agent = _app(tmp_path, [])
    with client:
        reply = agent.chat("find the red one", images=[str(tmp_path / "images" / "hit.png")])  # as the terminal chat
        listed = client.get("/v1/agent/threads").json()["data"]
        assert [t["id"] for t in listed] == [reply.thread_id]
        thread = client.get(f"/v1/agent/threads/{reply.thread_id}").json()
        roles = [m["role"] for m in thread["messages"]]
        assert roles == ["user", "assistant", "tool", "assistant"]
        user = thread["messages"][0]
        assert user["text"] == "find the red one" and "attached" not in user["text"]  # server paths stay private
        assert user["images"][0]["name"].endswith("hit.png") and user["images"][0]["url"].startswith("data:image/png")
        assert thread["messages"][1]["tool_calls"][0]["name"] == "search"
        (thumb,) = thread["messages"][2]["files"]
        assert thumb["kind"] == "thumbnail" and thumb["score"] == 0.5 and thumb["caption"] == "a <b>red</b> one"
        picture = client.get(thumb["url"])
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
        assert max(Image.open(__import__("io").BytesIO(picture.content)).size) <= 256
        again = client.get(f"/v1/agent/threads/{reply.thread_id}").json()["messages"][2]["files"][0]
        assert again["id"] == thumb["id"]  # reopening a thread registers no new file
        assert client.get("/v1/agent/threads/nope").status_code == 404
        off = client.get("/v1/agent/memories")
        assert off.status_code == 404 and off.json()["error"]["code"] == "memory_unavailable"


def test_the_page_and_its_files_are_served_with_a_strict_policy(tmp_path):
    client, _ = _app(tmp_path, [KEY_A])
    with client:
        page = client.get("/")  # no key needed: the page holds no data
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy and "frame-ancestors 'none'" in policy
        assert '<script src="/ui/app.js"' in page.text and "http" not in page.text.replace("http-equiv", "")
        script = client.get("/ui/app.js")
        assert script.status_code == 200 and "innerHTML" not in script.text and "textContent" in script.text
        assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
        assert client.get("/ui/../app.py").status_code == 404
        assert client.get("/ui/secrets.txt").status_code == 404
    client, _ = _app(tmp_path / "off", [KEY_A], ui=False)
    with client:
        assert client.get("/").status_code == 404


def test_the_page_ships_as_package_data():
    from importlib import resources

    import tomllib

    from agent.serve.web_page import PAGE_FILES

    static = resources.files("agent.serve").joinpath("static")
    for name in PAGE_FILES:
        assert static.joinpath(name).is_file(), name
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["agent.serve"]
    assert all(any(Path(name).match(pattern) for pattern in patterns) for name in (f"static/{n}" for n in PAGE_FILES))
