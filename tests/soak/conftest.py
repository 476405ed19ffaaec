"""The soak test runs only when asked (``tox -e soak`` sets EMHS_SOAK=1): it takes minutes."""

import os

collect_ignore_glob = [] if os.environ.get("EMHS_SOAK") else ["test_*.py"]
