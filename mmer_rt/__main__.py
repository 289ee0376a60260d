"""``python -m mmer_rt``: the same command line as ``mmer-rt``."""

from .cli import main

raise SystemExit(main())
