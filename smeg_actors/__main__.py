"""``python -m smeg_actors`` is the ``smeg`` command."""

import sys

from smeg_actors.cli.main import main

sys.exit(main())
