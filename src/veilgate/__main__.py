import sys

from veilgate.cli.main import main

sys.exit(main())
