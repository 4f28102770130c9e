"""Bare servers with no registry logic: the framework's own ceiling for each figure."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """The garbage-collector settings the project's server applies once serving (see
    discovery/heap.py): freeze what start-up built, enlarge the young generation. A runtime
    setting any server could use, so the baselines get it too and the figures compare the
    frameworks' work with ours, not a tuned process with a default one."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(10_000, middle, old)
