"""The server's own load figure is measured, not made up."""

from __future__ import annotations

import time

from discovery.core.load import ProcessLoad


class Clocks:
    """Wall and CPU time that move only when told to."""

    def __init__(self) -> None:
        self.wall_now = 100.0
        self.cpu_now = 5.0

    def wall(self) -> float:
        return self.wall_now

    def cpu(self) -> float:
        return self.cpu_now


def burn(cpu_seconds: float) -> None:
    """Use `cpu_seconds` of this process's CPU time, however long that takes on a busy machine."""
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass


def test_load_is_cpu_time_per_wall_time_capped_at_one() -> None:
    clocks = Clocks()
    meter = ProcessLoad(window=5, tick=1, wall=clocks.wall, cpu=clocks.cpu)
    clocks.wall_now += 2
    clocks.cpu_now += 0.5
    assert meter.value() == 0.25
    clocks.cpu_now += 10  # several threads' worth: still at most 1
    assert meter.value() == 1.0


def test_load_covers_the_window_only() -> None:
    clocks = Clocks()
    meter = ProcessLoad(window=2, tick=1, wall=clocks.wall, cpu=clocks.cpu)
    for _ in range(3):  # one busy second, then ...
        clocks.wall_now += 1
        clocks.cpu_now += 1
        meter._sample()
    for _ in range(3):  # ... idle seconds push it out of the window
        clocks.wall_now += 1
        meter._sample()
    assert meter.value() == 0.0


def test_a_busy_process_reads_higher_than_an_idle_one() -> None:
    busy_meter = ProcessLoad(window=5, tick=0.1)
    burn(0.2)
    busy = busy_meter.value()
    idle_meter = ProcessLoad(window=5, tick=0.1)
    time.sleep(0.2)
    idle = idle_meter.value()
    # On an idle machine busy is near 1 and idle near 0; a contended machine lowers busy only.
    assert 0.0 <= idle < busy <= 1.0
    assert idle <= 0.3
