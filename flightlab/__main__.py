import sys

from flightlab.cli import main

sys.exit(main())
