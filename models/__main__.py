"""Entry point for `python -m models`: see models/cli.py."""

from __future__ import annotations

import sys

from models.cli import main

sys.exit(main())
