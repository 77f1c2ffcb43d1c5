"""The ``llava-agent`` command line: fast help, clean one-line errors, threads, config, doctor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli.commands import one_line
from agent.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "diffusers", "chromadb", "bitsandbytes", "peft", "sentence_transformers",
         "langchain", "langgraph")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    monkeypatch.setenv("LLAVA_AGENT_DATA_DIR", str(folder))
    return folder


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, time; t = time.perf_counter(); from agent.cli.main import build_parser; "
        "build_parser().format_help(); "
        f"print(time.perf_counter() - t); print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    seconds, heavy = out.stdout.splitlines()
    assert heavy == "[]"
    assert float(seconds) < 0.5
    started = time.perf_counter()
    result = run_cli("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: llava-agent")
    assert time.perf_counter() - started < 5  # the process as a whole; the bench measures it precisely


def test_every_command_is_registered():
    help_text = build_parser().format_help()
    for command in ("chat", "ask", "index", "search", "video", "3d", "tools", "threads", "memories", "doctor", "config",
                    "finetune", "serve"):
        assert command in help_text


def test_one_line_joins_multi_line_messages():
    assert one_line("invalid configuration (x):\n  a = 1: bad\n  b = 2: worse") == (
        "invalid configuration (x): a = 1: bad; b = 2: worse"
    )


def test_bad_config_is_one_clean_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nquantization = "fp4"\n')
    assert main(["--config", str(path), "config", "show"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: invalid configuration") and "'fp4'" in err and "'4bit'" in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "none.toml"), "tools"]) == 1
    assert capsys.readouterr().err == f"error: config file {tmp_path / 'none.toml'} does not exist; create it or pass another --config\n"


def test_verbose_shows_the_traceback(tmp_path, data_dir):
    result = run_cli("--verbose", "threads", "show", "nope", env={"LLAVA_AGENT_DATA_DIR": str(data_dir)})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "error: unknown thread 'nope'" in result.stderr
    quiet = run_cli("threads", "show", "nope", env={"LLAVA_AGENT_DATA_DIR": str(data_dir)})
    assert quiet.returncode == 1 and quiet.stderr.strip().splitlines() == [
        "error: unknown thread 'nope'; list the threads with `llava-agent threads` (or /threads in the chat)"
    ]


def test_threads_list_rename_delete(data_dir, capsys):
    from agent.core.config import load_config
    from memory.conversations import ConversationStore

    with ConversationStore(load_config().conversations_db) as store:
        thread = store.new_thread("holiday photos").thread_id
    assert main(["threads"]) == 0
    assert f"{thread}" in capsys.readouterr().out
    assert main(["threads", "rename", thread, "trip", "to", "Porto"]) == 0
    assert capsys.readouterr().out.strip() == f"renamed {thread}: trip to Porto"
    assert main(["threads", "show", thread]) == 0
    assert "trip to Porto" in capsys.readouterr().out
    assert main(["threads", "delete", thread]) == 0
    assert main(["threads", "list"]) == 0
    assert "no conversations yet" in capsys.readouterr().out
    assert main(["threads", "delete", thread]) == 1


def test_config_show_prints_valid_toml(data_dir, capsys, tmp_path):
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    body = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    path = tmp_path / "shown.toml"
    path.write_text(body)
    from agent.core.config import load_config

    assert load_config(path, environ={}).data_dir == data_dir


def test_tools_lists_names_and_descriptions(data_dir, tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('[tools]\nenabled = ["speak"]\n[agent]\nlong_term_memory = true\n')
    assert main(["--config", str(path), "tools"]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["speak", "remember", "recall"]


def test_doctor_reports_every_check(data_dir, capsys):
    code = main(["doctor"])
    out = capsys.readouterr().out
    for name in ("python", "torch", "bitsandbytes", "espeak-ng", "audio player", "chroma", "chat model",
                 "text embedder"):
        assert f"] {name}:" in out
    assert "[ok  ] espeak-ng" in out and "[ok  ] chroma" in out
    assert "(runs in ONNX Runtime on a CPU)" in out  # the text embedder's default runtime, installed
    from agent.core.runtime import resolve_device
    from agent.llava.output_head import cpu_fastest_head

    if resolve_device("auto") == "cpu":
        assert f"decode head: {cpu_fastest_head()} (one token through a 49152x1024 head here: " in out
    assert code == 0
    for line in out.splitlines():
        if line.startswith("[FAIL]") or line.startswith("[warn]"):
            index = out.splitlines().index(line)
            assert out.splitlines()[index + 1].strip().startswith("->"), "each problem says what to do"


def doctor_lines(config_text: str, tmp_path, capsys) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(config_text)
    assert main(["--config", str(path), "doctor"]) == 0
    return capsys.readouterr().out.splitlines()


def test_doctor_says_video_generation_refuses_on_a_cpu(data_dir, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    lines = doctor_lines(f'[tools]\ndevice = "cpu"\nenabled = ["generate_video", "generate_3d"]\n'
                         f'video_model = "{models}"\nshape_model = "{models}"\nshape_image_model = "{models}"\n',
                         tmp_path, capsys)
    video = next(i for i, line in enumerate(lines) if "] video generation:" in line)
    assert lines[video].startswith("[warn] video generation: the tools run on the CPU: generate_video refuses to run here (a "
                                   "49-frame 720x480 clip with 50 steps would take about ")
    assert "hours on a CPU)" in lines[video] and "tools.video_allow_cpu = true" in lines[video + 1]
    assert f"[ok  ] video model: local folder {models}" in lines
    assert any(line.startswith("[ok  ] av: ") for line in lines)
    assert any(line.startswith("[ok  ] trimesh: ") for line in lines)

    allowed = doctor_lines('[tools]\ndevice = "cpu"\nvideo_allow_cpu = true\nenabled = []\n', tmp_path, capsys)
    line = next(line for line in allowed if "] video generation:" in line)
    assert line.startswith("[warn] video generation: generate_video runs on the CPU (tools.video_allow_cpu)")
    assert line.endswith("(not enabled: add generate_video to tools.enabled)")


def test_doctor_notes_video_generation_is_opt_in(data_dir, tmp_path, capsys):
    lines = doctor_lines('[tools]\ndevice = "cpu"\n', tmp_path, capsys)
    line = next(line for line in lines if "] video generation:" in line)
    assert line.startswith("[ok  ] video generation: the tools run on the CPU: generate_video refuses to run here")
    assert line.endswith("(not enabled: add generate_video to tools.enabled)")


def test_ask_with_a_missing_image_fails_cleanly(data_dir, tmp_path):
    config = tmp_path / "c.toml"  # the image is checked before any model loads
    config.write_text('[model]\nmodel = "/models/llava"\n[tools]\nenabled = []\n[agent]\nlong_term_memory = false\n')
    result = run_cli("--config", str(config), "ask", "hi", "--image", str(tmp_path / "gone.png"), "--json",
                     env={"LLAVA_AGENT_DATA_DIR": str(data_dir)})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: image '{tmp_path / 'gone.png'}' does not exist")
    assert result.stdout == ""


def test_global_options_also_work_after_the_command(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[agent]\nrecursion_limit = 0\n")
    assert main(["config", "show", "--config", str(path)]) == 1
    assert "agent.recursion_limit = 0" in capsys.readouterr().err
    args = build_parser().parse_args(["threads", "--verbose", "list"])
    assert args.verbose is True and args.config is None


def test_model_and_adapter_options_override_the_config(data_dir, tmp_path):
    from agent.cli.commands import _load_config

    adapter = tmp_path / "adapter"
    for command in ("chat", "ask"):
        argv = [command, "--model", str(tmp_path / "base"), "--adapter", str(adapter)]
        if command == "ask":
            argv.append("hello")
        args = build_parser().parse_args(argv)
        config = _load_config(args)
        assert config.model.model == str(tmp_path / "base")
        assert config.model.adapter == str(adapter)


def test_serve_refuses_an_open_network_server_without_keys(data_dir, capsys):
    assert main(["serve", "--host", "0.0.0.0", "--model", "/models/none"]) == 1  # refused before any model loads
    error = capsys.readouterr().err
    assert error.startswith("error: host '0.0.0.0' is reachable from other machines, so API keys are required")
    assert main(["serve", "--host", "0.0.0.0", "--api-key", "short"]) == 1
    assert "under the minimum of 16" in capsys.readouterr().err


def test_serve_without_its_extra_says_what_to_install(data_dir, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve"]) == 1
    assert "pip install 'llava-agent[serve]'" in capsys.readouterr().err


def test_serve_options_become_the_serve_section(data_dir, monkeypatch):
    from agent.serve import server

    seen = {}
    monkeypatch.setattr(server, "run_server", lambda config, api_keys, verbose, open_page: seen.update(
        config=config, keys=list(api_keys), open_page=open_page) or 0)
    argv = ["serve", "--host", "::1", "--port", "9001", "--api-key", "k" * 20, "--api-key", "j" * 20, "--no-agent",
            "--cors-origin", "https://app.example", "--model-name", "mine", "--allow-remote-images", "--max-batch", "2"]
    assert main(argv) == 0
    serve = seen["config"].serve
    assert (serve.host, serve.port, serve.agent_model, serve.cors_origins) == ("::1", 9001, None, ["https://app.example"])
    assert serve.model_name == "mine" and serve.allow_remote_images and seen["keys"] == ["k" * 20, "j" * 20]
    assert serve.max_batch == 2
    assert serve.ui is True and seen["open_page"] is False
    assert main(["serve", "--no-ui"]) == 0 and seen["config"].serve.ui is False and seen["open_page"] is False
    assert main(["web", "--port", "9002"]) == 0
    assert seen["config"].serve.ui is True and seen["config"].serve.port == 9002 and seen["open_page"] is True
    assert main(["web", "--no-browser"]) == 0 and seen["open_page"] is False


def test_doctor_says_when_the_onnx_runtime_asked_for_is_not_installed(data_dir, tmp_path, capsys, monkeypatch):
    import importlib.util

    from agent.cli import doctor

    real = importlib.util.find_spec
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    path = tmp_path / "c.toml"
    path.write_text('[memory]\ntext_embedder_runtime = "onnx"\n')
    main(["--config", str(path), "doctor"])
    lines = capsys.readouterr().out.splitlines()
    (index,) = [i for i, line in enumerate(lines) if "] text embedder:" in line]
    assert lines[index].startswith("[") and "'onnx' but onnxruntime or onnx is not installed" in lines[index]
    assert "pip install 'llava-agent[embeddings]'" in lines[index + 1]
