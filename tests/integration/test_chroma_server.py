"""Server mode: the image index against a real `chroma run` server started on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from agent.core.config import load_config
from agent.core.errors import ConfigError, StoreError
from memory.chroma import get_chroma_client
from memory.image_index import ImageIndex
from tools.search import SearchImagesTool

pytestmark = pytest.mark.integration


def chroma_executable() -> str | None:
    beside_python = Path(sys.executable).parent / "chroma"
    return str(beside_python) if beside_python.exists() else shutil.which("chroma")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    executable = chroma_executable()
    if executable is None:
        pytest.skip("the chroma CLI is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("chroma-server")
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [executable, "run", "--path", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"chroma server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_index_and_search_through_the_server(chroma_server, tool_model_paths, tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    for index, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (24, 24), colour).save(album / f"{index}.png")
    clip = str(tool_model_paths["clip"])
    index = ImageIndex(clip_model=clip, device="cpu", chroma_url=chroma_server, allowed_dirs=[tmp_path],
                       collection="server-images")
    report = index.index_folder(album, progress=False)
    assert (report.added, report.removed) == (3, 0)
    (album / "1.png").unlink()
    report = index.index_folder(album, progress=False)
    assert (report.added, report.removed, report.unchanged) == (0, 1, 2)

    config = load_config(overrides={
        "memory": {"chroma_url": chroma_server, "image_collection": "server-images"},
        "tools": {"clip_model": clip, "device": "cpu", "allowed_dirs": [str(tmp_path)]},
    })
    client = get_chroma_client(config)
    assert client.get_collection("server-images").count() == 2
    tool = SearchImagesTool.from_config(config)
    results = tool.invoke({"type": "tool_call", "id": "1", "name": "search_images",
                           "args": {"query": str(album / "2.png"), "k": 5}}).artifact["results"]
    assert [r["path"] for r in results][0] == str(album / "2.png") and len(results) == 2


def test_unreachable_server_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    config = load_config(overrides={"memory": {"chroma_url": url}})
    with pytest.raises(StoreError, match=f"cannot reach the Chroma server at {url}"):
        get_chroma_client(config)


def test_malformed_server_url_is_a_config_error():
    with pytest.raises(ConfigError, match="not an http"):
        get_chroma_client(load_config(overrides={"memory": {"chroma_url": "localhost:8000"}}))
