"""`python -m tldeploy` (and `torchrun -m tldeploy`) run the CLI."""

import sys

from tldeploy.cli import main

sys.exit(main())
