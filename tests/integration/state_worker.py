"""A process that promotes on a shared state database, for the kill -9 and concurrency tests.

python state_worker.py URL SCHEMA ROOT flip V1 V2            promote V2, roll back to V1, forever
python state_worker.py URL SCHEMA ROOT promote V EXPECT AT   at wall-clock AT, promote V expecting EXPECT
"""

from __future__ import annotations

import sys
import time

from geode.errors import VersionError
from geode.runtime.registry import ProgramRegistry
from geode.runtime.state import SqlState


def main(argv: list[str]) -> int:
    url, schema, root, mode, *rest = argv
    registry = ProgramRegistry(root, state=SqlState(url, schema_name=schema))
    if mode == "flip":
        _, v2 = rest  # V1 is what each rollback returns to
        print("ready", flush=True)
        n = 0
        while True:
            registry.promote("qa", v2, force=True)
            registry.rollback("qa")
            n += 1
            print(n, flush=True)
    version, expect, at = rest
    time.sleep(max(0.0, float(at) - time.time()))
    try:
        registry.promote("qa", version, force=True, expect_active=expect)
    except VersionError as err:
        print(f"told: {err}", flush=True)
        return 0
    print("won", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
