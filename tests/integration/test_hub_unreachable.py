"""No network, or a hub that never answers: one clear line within seconds, no log flood, one download hint."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def silent_hub():
    """A "hub" that accepts connections and never answers (a hub that times out)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    for connection in held:
        connection.close()
    server.close()


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens there once closed


def run_cli(tmp_path, endpoint: str, *args: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    config = tmp_path / "c.toml"
    config.write_text('[model]\nmax_new_tokens = 4\nquantization = "none"\ndevice = "cpu"\n'
                      '[tools]\nenabled = []\n[agent]\nlong_term_memory = false\n')
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), LLAVA_AGENT_DATA_DIR=str(tmp_path / "data"),
               PYTHONPATH=str(ROOT))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "agent.cli.main", "--config", str(config), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


@pytest.mark.parametrize("hub", ["refused", "silent"])
def test_an_uncached_model_without_a_hub_is_one_line_within_seconds(tmp_path, silent_hub, hub):
    endpoint = closed_port() if hub == "refused" else silent_hub
    result, seconds = run_cli(tmp_path, endpoint, "ask", "hello", "--model", "some-org/not-downloaded")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: chat model 'some-org/not-downloaded' is not in the local cache and the model hub")
    assert "`hf download some-org/not-downloaded`" in lines[0] and "huggingface-cli" not in lines[0]
    assert seconds < 45, f"took {seconds:.0f} s"  # process start and imports included; the probe itself is 3 s


def test_a_cached_model_loads_without_asking_the_unreachable_hub(tmp_path, tiny_llava_qwen2):
    """The model is in the Hugging Face cache: the chat answers although the hub is down."""
    snapshot = tmp_path / "hf" / "hub" / "models--some-org--tiny" / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_llava_qwen2, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123456789abcdef")
    result, seconds = run_cli(tmp_path, closed_port(), "ask", "hello", "--model", "some-org/tiny", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"thread_id"' in result.stdout and "Retrying" not in result.stderr
    assert seconds < 60


def test_the_chat_keeps_working_without_its_model(tmp_path, monkeypatch):
    import io

    from agent.cli.terminal import TerminalChat
    from agent.core.config import load_config
    from agent.core.hub_access import reset_probe

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", closed_port())
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", os.environ["HF_ENDPOINT"])
    reset_probe()
    config = load_config({"data_dir": str(tmp_path / "data"), "model": {"model": "some-org/not-downloaded",
                          "device": "cpu"}, "tools": {"enabled": []}, "agent": {"long_term_memory": False}}, environ={})
    out = io.StringIO()
    chat = TerminalChat(config, output=out)
    chat._loader.start()
    chat._loader.join(60)
    assert chat.model_error is not None
    chat._run_command("/threads")
    chat._run_command("/help")
    started = time.monotonic()
    assert chat.turn("hello") is None
    assert time.monotonic() - started < 10
    errors = [line for line in out.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "`hf download some-org/not-downloaded`" in errors[0]
    assert "no conversations yet" in out.getvalue() and "/resume ID" in out.getvalue()
    reset_probe()


def test_every_message_gives_the_same_download_hint(tmp_path):
    from agent.cli.doctor import _model_status
    from agent.core.config import load_config
    from agent.llava.loading import _not_found

    assert "`hf download org/m`" in str(_not_found("org/m", "is not cached"))
    check = _model_status("chat model", "org/uncached-model-for-hint", "model.model")
    assert "hf download org/uncached-model-for-hint" in check.advice and "model.model" in check.advice
    assert load_config({}, environ={}) is not None


@pytest.fixture
def offline_with_empty_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_an_uncached_or_missing_tool_model_is_one_clear_error_at_once(offline_with_empty_cache, tmp_path):
    from agent.core.errors import ModelNotFoundError
    from agent.core.hub_access import hub_load_kwargs
    from tools.generate import GenerateImageTool

    with pytest.raises(ModelNotFoundError, match=r"video model 'org/uncached-video' is not in the local cache and "
                                                 r"HF_HUB_OFFLINE is set; download it .*`hf download org/uncached-video`"):
        hub_load_kwargs("org/uncached-video", what="video model", config_file="model_index.json")
    with pytest.raises(ModelNotFoundError, match=r"the 3-D model folder '\./no-such-folder' does not exist"):
        hub_load_kwargs("./no-such-folder", what="3-D model")

    # in the cache (the file that names the pipeline is enough to decide): nothing to add, nothing asked
    snapshot = offline_with_empty_cache / "models--org--cached-sd" / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123456789abcdef")
    assert hub_load_kwargs("org/cached-sd", what="image model", config_file="model_index.json") == {}

    # through a tool: the call fails at once with that one line (not the library's OSError from inside diffusers)
    tool = GenerateImageTool(model="org/uncached-sd", device="cpu", artifacts_dir=tmp_path / "artifacts")
    started = time.monotonic()
    message = tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name,
                           "args": {"prompt": "a lighthouse", "width": 64, "height": 64}})
    assert message.status == "error"
    assert "image model 'org/uncached-sd' is not in the local cache and HF_HUB_OFFLINE is set" in message.content
    assert "`hf download org/uncached-sd`" in message.content and "model_index.json" not in message.content
    assert time.monotonic() - started < 10
