"""`python -m serve_app.batch INPUT OUTPUT [options]`: see serve_app/batch/cli.py."""

import sys

from serve_app.batch.cli import main

sys.exit(main())
