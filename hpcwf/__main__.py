import sys

from hpcwf.cli import main

sys.exit(main())
