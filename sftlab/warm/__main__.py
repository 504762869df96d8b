"""``python -m sftlab.warm MODULE [ARGS...]``: ``python -m MODULE ARGS`` through the warm server.

Where a process of its own is expected (``subprocess.Popen`` and its signals), this stands in for
it; without a server, or when the server refuses, it becomes ``python -m MODULE`` itself (exec).
"""

import os
import sys

from sftlab.warm import client


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m sftlab.warm MODULE [ARGS...]")
    module, args = sys.argv[1], sys.argv[2:]
    code = client.run(module, args)
    if code is None:
        os.execv(sys.executable, [sys.executable, "-m", module, *args])
    client.exit_like(code)


if __name__ == "__main__":
    main()
