"""``python -m scalabl`` = the ``scalabl`` command (e.g. under ``accelerate launch -m scalabl``)."""

import sys

from scalabl.cli import main

sys.exit(main())
