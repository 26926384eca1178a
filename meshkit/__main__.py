import sys

from meshkit.cli import main

sys.exit(main())
