"""Fixtures of the interop suite: a real server per receiver name, started once per module.

A receiver whose program or Python package is missing is skipped with the
reason, except under CI (``CI=true``), where that fails the test: CI installs
everything (``.ci/run``), so a missing server there is a broken set-up, not a
reason to pass quietly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.interop.servers import RECEIVERS, Receiver, Unavailable, start


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip (fail under CI) for a server that cannot run here."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module", params=RECEIVERS)
def receiver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """A running server (see :mod:`tests.interop.servers`), stopped after the module's tests."""
    name: str = request.param
    try:
        server = start(name, tmp_path_factory.mktemp(name))
    except Unavailable as exc:
        unavailable(f"{name}: {exc}")
    try:
        yield server
    finally:
        server.stop()
