"""``python -m omnirelay`` runs the command line."""

import sys

from omnirelay.cli import main

sys.exit(main())
