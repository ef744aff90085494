import sys

from lambdapool.tools.cli import main

sys.exit(main())
