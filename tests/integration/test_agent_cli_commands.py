"""``llava-agent index`` and ``search`` on a tiny CLIP and a real embedded Chroma store."""

from __future__ import annotations

import pytest

from agent.cli.main import main

pytestmark = pytest.mark.integration


def test_index_then_search(tmp_path, tool_model_paths, monkeypatch, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, colour in {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}.items():
        Image.new("RGB", (32, 32), colour).save(photos / f"{name}.png")
    (photos / "notes.txt").write_text("not an image")
    config = tmp_path / "config.toml"
    config.write_text(f'[tools]\nclip_model = "{tool_model_paths["clip"]}"\ndevice = "cpu"\n'
                      f'allowed_dirs = ["{tmp_path}"]\n')
    monkeypatch.setenv("LLAVA_AGENT_DATA_DIR", str(tmp_path / "data"))

    assert main(["--config", str(config), "index", str(photos)]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith(f"{photos}: 3 added, 0 updated, 0 removed, 0 unchanged")
    assert main(["--config", str(config), "index", str(photos)]) == 0
    assert "0 added, 0 updated, 0 removed, 3 unchanged" in capsys.readouterr().out

    assert main(["--config", str(config), "search", "a red square", "-k", "2"]) == 0
    hits = capsys.readouterr().out.strip().splitlines()
    assert len(hits) == 2
    for line in hits:
        score, path = line.split("  ")[:2]
        assert -1.0 <= float(score) <= 1.0 and path.startswith(str(photos)) and path.endswith(".png")
    assert main(["--config", str(config), "search", str(photos / "blue.png"), "-k", "1"]) == 0
    assert capsys.readouterr().out.split("  ")[1].strip() == str(photos / "blue.png")

    assert main(["--config", str(config), "index", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == (
        f"error: folder {str(tmp_path / 'nowhere')!r} does not exist or is not a folder; give a folder of images\n"
    )
    assert main(["--config", str(config), "index", "/etc"]) == 1
    assert "is outside the allowed folders" in capsys.readouterr().err
