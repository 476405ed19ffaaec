"""A loopback receiver for the examples: counts what arrives (python -m examples.receiver [port])."""

from __future__ import annotations

import sys
import time

from eventmesh_http_sink.testing import FaultServer


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    with FaultServer(port=port, keep_log=False) as server:
        print(f"receiving on {server.url} (Ctrl+C to stop)", flush=True)
        last = -1
        try:
            while True:
                time.sleep(1)
                count = server.status_counts[200]
                if count != last:
                    print(f"{count} records received over {server.connections} connections", flush=True)
                    last = count
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
