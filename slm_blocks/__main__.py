"""`python -m slm_blocks ...`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
