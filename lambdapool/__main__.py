import sys

from lambdapool.cli import main

sys.exit(main())
