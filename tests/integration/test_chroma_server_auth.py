"""Server mode with auth: a real `chroma run` behind a proxy that checks the token (or basic auth)."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import pytest

from agent.core.config import config_to_toml, load_config
from agent.core.errors import ConfigError, StoreError
from memory.chroma import get_chroma_client
from tests.chroma_auth_proxy import start_proxy
from tests.integration.test_chroma_server import chroma_executable, free_port

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-1234"
PASSWORD = "pa55-w0rd"


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    executable = chroma_executable()
    if executable is None:
        pytest.skip("the chroma CLI is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("chroma-auth-server")
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [executable, "run", "--path", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"chroma server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    token_proxy, token_port = start_proxy(port, token=TOKEN)
    basic_proxy, basic_port = start_proxy(port, basic=("ana", PASSWORD))
    yield {"token": f"http://127.0.0.1:{token_port}", "basic": f"http://127.0.0.1:{basic_port}"}
    token_proxy.shutdown()
    basic_proxy.shutdown()
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def memory_config(tmp_path, environ, **memory):
    return load_config({"data_dir": str(tmp_path / "data"), "memory": memory}, environ=environ)


@pytest.mark.parametrize("header", ["Authorization", "X-Chroma-Token"])
def test_token_from_the_environment_opens_the_server(protected, tmp_path, header):
    environ = {"LLAVA_AGENT_MEMORY__CHROMA_TOKEN": TOKEN, "LLAVA_AGENT_MEMORY__CHROMA_TOKEN_HEADER": header}
    config = memory_config(tmp_path, environ, chroma_url=protected["token"])
    client = get_chroma_client(config)
    collection = client.get_or_create_collection(f"auth-{header.lower()}", embedding_function=None)
    collection.add(ids=["a"], embeddings=[[1.0, 0.0]], documents=["hello"])
    assert collection.count() == 1
    assert TOKEN not in repr(config) and TOKEN not in config_to_toml(config)
    assert "# chroma_token is set (hidden)" in config_to_toml(config)


def test_a_wrong_or_missing_token_is_one_clear_error_without_the_secret(protected, tmp_path):
    wrong = "wrong-token-9876"
    config = memory_config(tmp_path, {"LLAVA_AGENT_MEMORY__CHROMA_TOKEN": wrong}, chroma_url=protected["token"])
    with pytest.raises(StoreError) as caught:
        get_chroma_client(config)
    message = str(caught.value)
    assert message.startswith(f"the Chroma server at {protected['token']} refused the credentials")
    assert "check memory.chroma_token" in message and wrong not in message and "\n" not in message
    with pytest.raises(StoreError, match="refused the credentials"):
        get_chroma_client(memory_config(tmp_path, {}, chroma_url=protected["token"]))


def test_basic_auth_from_the_url_works_and_the_password_is_never_shown(protected, tmp_path, capsys):
    from agent.cli.main import main

    url = protected["basic"].replace("http://", f"http://ana:{PASSWORD}@")
    config = memory_config(tmp_path, {}, chroma_url=url)
    assert get_chroma_client(config).heartbeat() > 0
    assert PASSWORD not in config_to_toml(config) and "ana:***@" in config_to_toml(config)
    bad = memory_config(tmp_path, {}, chroma_url=url.replace(PASSWORD, "nope-nope"))
    with pytest.raises(StoreError, match="refused the credentials") as caught:
        get_chroma_client(bad)
    assert "nope-nope" not in str(caught.value)
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'data_dir = "{tmp_path / "data"}"\n[memory]\nchroma_url = "{url}"\n')
    assert main(["--config", str(config_file), "config", "show"]) == 0
    assert main(["--config", str(config_file), "doctor"]) in (0, 1)
    out = capsys.readouterr().out
    assert PASSWORD not in out and "[ok  ] chroma: " in out


def test_settings_that_cannot_mean_one_thing_are_refused_without_echoing_secrets(tmp_path):
    with pytest.raises(ConfigError, match="either memory.chroma_token or basic auth") as caught:
        memory_config(tmp_path, {"LLAVA_AGENT_MEMORY__CHROMA_TOKEN": TOKEN}, chroma_url="http://ana:pw12345@host:1")
    assert TOKEN not in str(caught.value) and "pw12345" not in str(caught.value)
    with pytest.raises(ConfigError, match="chroma_password is set without memory.chroma_username"):
        memory_config(tmp_path, {"LLAVA_AGENT_MEMORY__CHROMA_PASSWORD": "x"}, chroma_url="http://host:1")
    digits = memory_config(tmp_path, {"LLAVA_AGENT_MEMORY__CHROMA_TOKEN": "123456"}, chroma_url="http://h:1")
    assert digits.memory.chroma_token.get_secret_value() == "123456", "a token of digits stays text"
