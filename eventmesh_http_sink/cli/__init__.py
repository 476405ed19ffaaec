"""The command line: ``eventmesh-http-sink send | replay | receive | demo``."""

from .main import main

__all__ = ["main"]
