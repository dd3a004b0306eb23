"""`python -m xvlm_edge.cli`: the same program as the `xvlm-edge` console script."""

import sys

from xvlm_edge.cli import main

sys.exit(main())
