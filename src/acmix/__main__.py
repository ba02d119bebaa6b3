"""``python -m acmix ...``: the ``acmix`` command line."""

import sys

from acmix.cli.main import main

sys.exit(main())
