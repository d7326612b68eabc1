"""``python -m bcat.cli`` (what ``accelerate launch -m bcat.cli`` runs on every process)."""

import sys

from bcat.cli import main

sys.exit(main())
