"""External load tools and baselines (wrk, h2load, etcd), installed from Debian when missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.common import CLIENT_CPU, pinned

PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client", "etcd": "etcd-server"}


def ensure(*commands: str) -> None:
    """Install the Debian packages that provide `commands` when they are not on PATH."""
    missing = sorted({PACKAGES[c] for c in commands if shutil.which(c) is None})
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-q", *missing],
        check=True,
        env=env,
        capture_output=True,
    )


@dataclass
class WrkResult:
    requests_per_second: float
    requests: int
    bad: int  # non-2xx/3xx answers, socket errors and time-outs

    def checked(self, what: str) -> float:
        """The rate, after making sure every request succeeded."""
        if self.bad or self.requests == 0:
            raise SystemExit(f"{what}: {self.bad} of {self.requests} requests failed")
        return self.requests_per_second


def wrk(
    url: str,
    seconds: float,
    connections: int,
    lua: str | None = None,
    threads: int = 1,
) -> WrkResult:
    """Run wrk on the client core; `lua` is a request script (see wrk's SCRIPTING)."""
    ensure("wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua or "")
    try:
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script.name,
            url,
        ]
        output = subprocess.run(
            pinned(command, CLIENT_CPU), capture_output=True, text=True, check=True
        ).stdout
    finally:
        Path(script.name).unlink()
    return _parse_wrk(output)


def _parse_wrk(output: str) -> WrkResult:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    bad = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        bad += int(match[1])
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        bad += sum(int(n) for n in match.groups())
    return WrkResult(rate, total, bad)


def post_script(bodies: list[str], headers: dict[str, str]) -> str:
    """A wrk Lua script that POSTs `bodies` in turn with `headers`."""
    quoted = ",\n".join("[[" + body + "]]" for body in bodies)
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return f"""
wrk.method = "POST"
{header_lines}
local bodies = {{
{quoted}
}}
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""
