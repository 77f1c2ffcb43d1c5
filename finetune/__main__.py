"""``python -m finetune validate|train|merge|eval ...``"""

from finetune.cli import main

raise SystemExit(main())
