"""The wire: one HTTP attempt (transports, request building and encoding)."""
