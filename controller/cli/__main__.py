"""`python -m controller.cli` runs the `nebuliser` command."""

import sys

from controller.cli import main

sys.exit(main())
