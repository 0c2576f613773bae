"""`python -m perceiver_io ...`: the `convert-checkpoint` command line."""

import sys

from converters.cli import main

sys.exit(main())
