"""Garbage-collector settings for a long-running server with a large, steady heap.

A full collection walks every tracked object and stops the event loop while it does: with
10,000 instances registered and 1,000 probes per second, CPython's defaults ran one about every
three seconds, each 50-100 ms long, which is what REST reads then saw as their p99. Freezing what
start-up built (modules, schemas, both servers) takes it out of every later collection, and a
larger young generation lets the short-lived objects of a probe or a request die before any
collection sees them, so fewer survive into the old generation and full collections grow rare.

Start-up itself runs without the collector (`pause_collector`): what it builds lives as long as
the process, so collecting while it grows finds almost nothing, yet each collection walks all of
it. Restoring 100,000 stored instances with the collector on took about twice as long, most of
it in full collections of the growing heap. `settle_heap` collects once, at the end.
"""

from __future__ import annotations

import gc

#: Allocations between two collections of the young generation (CPython's default is 700).
YOUNG_GENERATION_THRESHOLD = 10_000


def pause_collector() -> None:
    """Call when start-up begins: no collection runs until `settle_heap()`."""
    gc.disable()


def settle_heap() -> None:
    """Call once, when start-up is done: collect what start-up left, freeze what exists, enlarge
    the young generation and turn the collector (back) on."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
    gc.enable()
