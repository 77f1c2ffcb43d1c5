"""Publishing adapter and merged-model folders: killed at every step, the target is always complete.

A forked child publishes a new folder over an old one and SIGKILLs itself just before its N-th
call into the operating system (``os.fsync``, ``os.replace``, ``os.unlink``, ``open``...), for
every N the publish makes: the filesystem changes only inside those calls (and the one ctypes
call that swaps the folders, which an ``os`` call follows), so these kills land on every state a
real kill could leave.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from finetune import folders
from finetune.folders import exchange_paths, publish_folder, staging_folder

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill test forks")

OLD = {"adapter_model.safetensors": b"old weights " * 50, "adapter_config.json": b'{"r": 4}',
       "nested/log.txt": b"old log"}
NEW = {"adapter_model.safetensors": b"new weights " * 70, "adapter_config.json": b'{"r": 8}',
       "loss_curve.png": b"png", "nested/log.txt": b"new log"}


def write_tree(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def prepare(root: Path) -> tuple[Path, Path]:
    """An old adapter at root/adapter and a new one staged beside it, as training leaves them."""
    target = root / "adapter"
    target.mkdir(parents=True)
    write_tree(target, OLD)
    staging = staging_folder(target)
    write_tree(staging, NEW)
    return staging, target


OS_MODULES = {"posix", "nt", "_io", "io"}


def is_os_call(event: str, function: object) -> bool:
    return event == "c_call" and getattr(function, "__module__", None) in OS_MODULES


def count_os_calls(root: Path) -> int:
    staging, target = prepare(root)
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        calls += is_os_call(event, arg)

    sys.setprofile(profile)
    try:
        publish_folder(staging, target)
    finally:
        sys.setprofile(None)
    assert read_tree(target) == NEW and sorted(p.name for p in root.iterdir()) == ["adapter"]
    return calls


def publish_killed_at(root: Path, kill_at: int) -> int:
    """Publish in a forked child killed just before its ``kill_at``-th OS call; returns the wait status."""
    staging, target = prepare(root)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        calls = 0

        def profile(frame, event, arg):
            nonlocal calls
            if is_os_call(event, arg):
                calls += 1
                if calls == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

        try:
            sys.setprofile(profile)
            publish_folder(staging, target)
            sys.setprofile(None)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return status


def exchange_supported(tmp_path: Path) -> bool:
    first, second = tmp_path / "probe-a", tmp_path / "probe-b"
    first.mkdir()
    second.mkdir()
    (first / "a").touch()
    swapped = exchange_paths(first, second)
    if swapped:
        assert (second / "a").is_file() and not (first / "a").exists()
    return swapped


def test_publish_replaces_the_folder_and_leaves_nothing_beside_it(tmp_path):
    staging, target = prepare(tmp_path)
    publish_folder(staging, target)
    assert read_tree(target) == NEW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    fresh = tmp_path / "fresh"  # a first publish, where nothing was there yet
    staging = staging_folder(fresh)
    write_tree(staging, OLD)
    publish_folder(staging, fresh)
    assert read_tree(fresh) == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "fresh"]


def test_a_kill_at_any_step_of_publishing_never_leaves_the_target_missing_or_partial(tmp_path):
    if not exchange_supported(tmp_path):
        pytest.skip("this filesystem cannot exchange two paths atomically (the fallback is tested below)")
    total = count_os_calls(tmp_path / "count")
    assert total > 5
    outcomes = set()
    for kill_at in range(1, total + 1):
        root = tmp_path / f"kill-{kill_at}"
        status = publish_killed_at(root, kill_at)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"step {kill_at}: {status}"
        target = root / "adapter"
        assert target.is_dir(), f"killed before OS call {kill_at} of {total}: no folder at the target"
        contents = read_tree(target)
        assert contents in (OLD, NEW), f"killed before OS call {kill_at} of {total}: a partial folder"
        outcomes.add("new" if contents == NEW else "old")
        next_staging = staging_folder(target)  # what the next save does first: leftovers go, a fresh folder comes
        assert next_staging.is_dir() and not any(next_staging.iterdir())
        assert sorted(p.name for p in root.iterdir() if p != next_staging) == ["adapter"], f"step {kill_at}: stray folders"
        assert read_tree(target) == contents
    assert outcomes == {"old", "new"}  # the kills landed before and after the swap


def test_without_atomic_exchange_the_next_save_restores_a_folder_left_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(folders, "_exchange_call", lambda: None)
    total = count_os_calls(tmp_path / "count")
    missing = 0
    for kill_at in range(1, total + 1):
        root = tmp_path / f"kill-{kill_at}"
        status = publish_killed_at(root, kill_at)
        assert os.WIFSIGNALED(status), f"step {kill_at}: {status}"
        target = root / "adapter"
        missing += not target.exists()
        next_staging = staging_folder(target)
        assert sorted(p.name for p in root.iterdir() if p != next_staging) == ["adapter"], f"step {kill_at}: stray folders"
        assert read_tree(target) in (OLD, NEW), f"killed before OS call {kill_at} of {total}"
    assert missing >= 1  # the window this fallback has, and the reason the exchange is used where it exists
