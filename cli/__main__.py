"""`python -m cli ...` runs the `assistant` command."""

import sys

from cli.main import main

sys.exit(main())
