"""The collector settings the server applies once started (in a fresh process: they are global)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import gc
from discovery.heap import YOUNG_GENERATION_THRESHOLD, pause_collector, settle_heap
before = gc.get_threshold()
pause_collector()
assert not gc.isenabled()
settle_heap()
assert gc.isenabled()
after = gc.get_threshold()
assert after == (YOUNG_GENERATION_THRESHOLD, before[1], before[2]), after
assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
"""


def test_settle_heap_freezes_start_up_objects_and_enlarges_the_young_generation() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
