"""`python -m tcspec.cli`: the `tcspec` command."""

import sys

from tcspec.cli import main

sys.exit(main())
