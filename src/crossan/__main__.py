import sys

from crossan.cli import main

sys.exit(main())
