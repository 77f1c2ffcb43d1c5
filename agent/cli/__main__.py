"""``python -m agent.cli.main``: the same as the ``llava-agent`` command."""

import sys

from agent.cli.main import main

sys.exit(main())
