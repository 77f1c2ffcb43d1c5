"""Private by default: the data folder and what is in it are the user's alone; temp files cannot be hijacked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PIL import Image


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():
    previous = os.umask(0o022)  # the common default: what the data folder used to get
    yield
    os.umask(previous)


def test_data_folder_and_files_are_created_private(tmp_path, open_umask):
    from agent.app.attachments import save_attachment
    from agent.core.files import write_new_artifact
    from memory.chroma import open_chroma_client
    from memory.conversations import ConversationStore

    data = tmp_path / "data"
    with ConversationStore(data / "conversations.sqlite") as store:
        store.new_thread("a private title")
    assert mode(data) == 0o700 and mode(data / "conversations.sqlite") == 0o600
    for extra in ("-wal", "-shm"):
        if (data / f"conversations.sqlite{extra}").exists():
            assert mode(data / f"conversations.sqlite{extra}") == 0o600
    picture = tmp_path / "cat.png"
    Image.new("RGB", (4, 4)).save(picture)
    saved, _, _ = save_attachment(picture, data / "attachments")
    assert mode(data / "attachments") == 0o700 and mode(saved) == 0o600
    artifact = write_new_artifact(data / "artifacts", "a cat", ".png", lambda handle: handle.write(b"png"))
    assert mode(data / "artifacts") == 0o700 and mode(artifact) == 0o600
    open_chroma_client(path=data / "chroma")
    assert mode(data / "chroma") == 0o700


def test_doctor_warns_about_a_data_folder_others_can_read(tmp_path):
    from agent.cli.doctor import check_data_folder
    from agent.core.config import load_config

    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    check = check_data_folder(load_config({"data_dir": str(folder)}, environ={}))
    assert check.status == "warn" and "mode 755" in check.detail and check.advice == f"chmod 700 {folder}"
    os.chmod(folder, 0o700)
    assert check_data_folder(load_config({"data_dir": str(folder)}, environ={})).status == "ok"


def test_a_symlink_planted_at_the_old_temp_name_is_never_written_through(tmp_path):
    """Temporary names used to be predictable (``.NAME.tmp-PID``) and opened without O_EXCL."""
    from agent.app.attachments import save_attachment
    from agent.core.files import atomic_write_text

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out" / "config.toml"
    target.parent.mkdir()
    (target.parent / f".config.toml.tmp-{os.getpid()}").symlink_to(victim)
    atomic_write_text(target, "new = 1\n")
    assert target.read_text() == "new = 1\n" and victim.read_text() == "precious"

    picture = tmp_path / "cat.png"
    Image.new("RGB", (4, 4)).save(picture)
    import hashlib

    digest = hashlib.sha256(picture.read_bytes()).hexdigest()[:12]
    folder = tmp_path / "attachments"
    folder.mkdir()
    (folder / f".{digest}-cat.png.tmp-{os.getpid()}").symlink_to(victim)
    saved, _, _ = save_attachment(picture, folder)
    assert saved.read_bytes() == picture.read_bytes() and victim.read_text() == "precious"


def test_staging_folders_are_new_and_unpredictable(tmp_path):
    from finetune.folders import staging_folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "adapter"
    (tmp_path / f".adapter.tmp-{os.getpid()}").symlink_to(elsewhere)
    staging = staging_folder(target)
    assert staging.is_dir() and not staging.is_symlink() and staging.parent == tmp_path
    assert mode(staging) == 0o700 and not list(elsewhere.iterdir())


def test_a_full_disk_while_keeping_an_attachment_is_one_clear_error(tmp_path, monkeypatch):
    import errno

    import agent.app.attachments
    from agent.app.attachments import save_attachment
    from agent.core.errors import StoreError

    def full(path, write, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(agent.app.attachments, "write_file_atomically", full)
    picture = tmp_path / "cat.png"
    Image.new("RGB", (4, 4)).save(picture)
    with pytest.raises(StoreError, match=r"cannot keep a copy of .*cat\.png.* \(No space left on device\); free some disk"):
        save_attachment(picture, tmp_path / "attachments")
