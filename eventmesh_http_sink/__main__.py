"""``python -m eventmesh_http_sink``: the command line (see :mod:`eventmesh_http_sink.cli`)."""

import sys

from .cli import main

sys.exit(main())
