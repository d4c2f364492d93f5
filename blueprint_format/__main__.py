"""`python -m blueprint_format` runs the blueprint CLI."""

import sys

from blueprint_format.cli import main

sys.exit(main())
