import sys

from skymoe.cli import main

sys.exit(main())
