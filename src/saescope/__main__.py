"""`python -m saescope ...`: the command line (as `torchrun -m saescope` will launch it)."""

import sys

from saescope.cli import main

sys.exit(main())
