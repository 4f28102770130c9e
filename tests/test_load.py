"""The server's own load figure is measured, not made up."""

from __future__ import annotations

import time

from discovery.core.load import ProcessLoad


def burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_busy_process_reads_high_and_idle_reads_low() -> None:
    meter = ProcessLoad(window=5, tick=0.1)
    burn(0.3)
    busy = meter.value()
    assert 0.4 <= busy <= 1.0  # CPU-bound: near 1 unless the machine is contended
    idle = ProcessLoad(window=5, tick=0.1)
    time.sleep(0.3)
    assert 0.0 <= idle.value() <= 0.3
