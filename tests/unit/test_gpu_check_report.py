"""The GPU check's step runner and report: a failing step is recorded and the run goes on, and the
report on disk always says where the run stands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.gpu_check import run_step
from bench.gpu_check_report import REPORT_JSON, REPORT_MD, Report, StepRecord


@pytest.fixture
def report(tmp_path) -> Report:
    args = argparse.Namespace(device="cpu", size="tiny")
    steps = [StepRecord(1, "one", "First step"), StepRecord(2, "two", "Second step"), StepRecord(3, "three", "Third")]
    return Report(tmp_path / "out", args, steps)


CONTEXT = SimpleNamespace(assets=SimpleNamespace(seconds={"llava": 1.5}))


def _saved(report: Report) -> dict:
    return json.loads((report.folder / REPORT_JSON).read_text())


def test_a_failing_step_is_recorded_with_its_error_and_the_next_step_runs(report):
    def broken(context, record):
        record.metric("reached", 1.0)
        raise RuntimeError("no CUDA kernel for this op")

    def working(context, record):
        record.metric("tok_s", 19.5)
        record.check("valid", True)
        record.headline = "19.5 tok/s"

    run_step(report.steps[0], broken, CONTEXT, report)
    run_step(report.steps[1], working, CONTEXT, report)
    first, second = _saved(report)["steps"][:2]
    assert first["status"] == "failed" and first["error"] == "RuntimeError: no CUDA kernel for this op"
    assert "Traceback" in first["traceback"] and first["metrics"] == {"reached": 1.0}
    assert second["status"] == "passed" and second["metrics"] == {"tok_s": 19.5}
    markdown = (report.folder / REPORT_MD).read_text()
    assert "| 1. First step | failed |" in markdown and "| 2. Second step | passed |" in markdown
    assert "19.5 tok/s" in markdown and "**not finished**" in markdown
    assert _saved(report)["build_seconds"] == {"llava": 1.5}


def test_a_failed_check_fails_the_step_but_lets_it_finish(report):
    def step(context, record):
        record.check("calls valid", False, "3/20 valid")
        record.metric("after", 2)

    run_step(report.steps[0], step, CONTEXT, report)
    saved = _saved(report)["steps"][0]
    assert saved["status"] == "failed" and saved["error"] == "failed checks: calls valid"
    assert saved["metrics"] == {"after": 2}


def test_a_step_may_report_itself_not_available(report):
    def step(context, record):
        record.status = "not available"

    run_step(report.steps[0], step, CONTEXT, report)
    assert _saved(report)["steps"][0]["status"] == "not available"


def test_the_report_says_which_step_is_running_while_it_runs(report):
    seen = {}

    def step(context, record):
        seen.update(_saved(report)["steps"][0])

    run_step(report.steps[0], step, CONTEXT, report)
    assert seen["status"] == "running"
    assert not list(Path(report.folder).glob(".*.tmp"))  # written atomically, no temporary left behind


def test_targets_are_reported_without_failing_the_step(report):
    def step(context, record):
        record.target("peak GPU memory", 9.1, "<= 8 GiB", False)
        record.target("decode ratio", 99.0, ">= 95%", None)

    run_step(report.steps[0], step, CONTEXT, report)
    assert _saved(report)["steps"][0]["status"] == "passed"
    markdown = (report.folder / REPORT_MD).read_text()
    assert "| peak GPU memory | 9.1 | <= 8 GiB | **no** |" in markdown
    assert "| decode ratio | 99 | >= 95% | n/a (dry run) |" in markdown
