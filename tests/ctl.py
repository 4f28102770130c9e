"""Runs the installed `discoveryctl` console script as a user would, in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CTL = Path(sys.executable).with_name("discoveryctl")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without a server address or secret of its own, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISCOVERY_SERVER", "SERVICE_DISCOVERY_SECRET")
    }
    env["COLUMNS"] = "100"
    env.update(extra or {})
    return env


async def ctl(*args: str, env: Mapping[str, str] | None = None, within: float = 30) -> Result:
    """`discoveryctl ARGS...`: its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(CTL),
        *args,
        env=environment(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def start_watch(
    *args: str, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`discoveryctl watch ARGS...` running in the background, its stdout piped."""
    return await asyncio.create_subprocess_exec(
        str(CTL),
        "watch",
        *args,
        env=environment(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
