"""External tools (wrk, etcd, node), installed from Debian when missing, and a checked wrk run.

wrk runs on the load generator's core with a Lua script that rotates over a list of request
bodies and checks every response: its status and that its body holds the expected text (a number
of times). A run in which any response is wrong, or any socket error or time-out happened, does
not count.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import CLIENT_CPU, BenchError, pinned

PACKAGES = {"wrk": "wrk", "etcd": "etcd-server", "node": "nodejs"}


class ToolMissing(RuntimeError):
    """A tool is not on PATH and could not be installed: its figures are skipped, loudly."""


def ensure(*commands: str) -> None:
    """Install the Debian packages that provide `commands` when they are not on PATH."""
    missing = sorted({PACKAGES[c] for c in commands if shutil.which(c) is None})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for step in (["update", "-q"], ["install", "-y", "-q", *missing]):
            subprocess.run(
                [*sudo, "apt-get", *step], check=True, env=env, capture_output=True, timeout=600
            )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolMissing(f"cannot install {', '.join(missing)}: {exc}") from exc
    still = [c for c in commands if shutil.which(c) is None]
    if still:
        raise ToolMissing(f"{', '.join(still)} still missing after installing {missing}")


@functools.cache
def node_or_python() -> tuple[str, str]:
    """("node", "") when Node can be had, else ("python", why not): which load generators
    and watchers to run. Asked once per bench run (a failed install is not retried)."""
    try:
        ensure("node")
    except ToolMissing as exc:
        return "python", str(exc)
    return "node", ""


@dataclass
class WrkResult:
    rate: float  # responses per second
    requests: int
    good: int
    bad: int  # wrong status or body, plus socket errors and time-outs

    def checked(self, what: str) -> float:
        """The rate, after making sure every response was checked and right."""
        if self.bad or self.requests == 0 or self.good != self.requests:
            raise BenchError(
                f"{what}: {self.requests} responses, {self.good} right, {self.bad} wrong or lost"
            )
        return self.rate


def script(
    bodies: Sequence[str], headers: dict[str, str], expect: str, times: int = 1, method: str = ""
) -> str:
    """A wrk Lua script: requests with `bodies` in turn (GETs when there are none), each
    response checked for status 200 and `expect` appearing at least `times` times."""
    method = method or ("POST" if bodies else "GET")
    listed = ",\n".join("[==[" + body + "]==]" for body in bodies) or "nil"
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return f"""
wrk.method = "{method}"
{header_lines}
local bodies = {{ {listed} }}
local expect = [==[{expect}]==]
local times = {times}
local requests = {{}}
local i = 0
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  good = 0
  bad = 0
  for k, body in ipairs(bodies) do requests[k] = wrk.format(nil, nil, nil, body) end
  if #requests == 0 then requests[1] = wrk.format() end
end

function request()
  i = i % #requests + 1
  return requests[i]
end

function response(status, headers, body)
  local found, at = 0, 1
  if status == 200 then
    while found < times do
      local s, e = string.find(body, expect, at, true)
      if not s then break end
      found, at = found + 1, e + 1
    end
  end
  if found == times then good = good + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do
    g = g + t:get("good")
    b = b + t:get("bad")
  end
  io.write(string.format("checked good %d bad %d\\n", g, b))
end
"""


def wrk(url: str, lua: str, seconds: float, connections: int, threads: int = 1) -> WrkResult:
    """Run wrk on the load generator's core and parse what it printed."""
    ensure("wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(lua)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        file.name,
        url,
    ]
    try:
        done = subprocess.run(
            pinned(command, CLIENT_CPU), capture_output=True, text=True, timeout=seconds + 60
        )
    finally:
        Path(file.name).unlink()
    if done.returncode != 0:
        raise BenchError(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    return parse(done.stdout)


def parse(output: str) -> WrkResult:
    """Requests/sec, the request count, the Lua check and socket errors from wrk's output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    checked = re.search(r"checked good (\d+) bad (\d+)", output)
    if not (rate and total and checked):
        raise BenchError(f"unexpected wrk output:\n{output}")
    bad = int(checked[2])
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        bad = max(bad, int(match[1]))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        bad += sum(int(n) for n in match.groups())
    return WrkResult(float(rate[1]), int(total[1]), int(checked[1]), bad)
