import sys

from tcspec.cli import main

sys.exit(main())
