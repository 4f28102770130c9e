"""The console entry point: settings from the environment and flags, logging, then `serve()`.

`service-discovery` and `python -m discovery` both land in `main()`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from discovery import logs
from discovery.core.settings import ENV_VARS, ConfigError, Settings
from discovery.server import serve
from discovery.tls import load_server_tls

log = logging.getLogger("discovery")

# The secret is read from the environment only: a flag would show it in `ps`.
_NO_FLAG = frozenset({"secret"})


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Settings from the environment, overridden by flags (`--rest-port` and so on)."""
    parser = argparse.ArgumentParser(
        prog="service-discovery",
        description="Service discovery and health monitoring server (REST + gRPC).",
    )
    for field, variable in ENV_VARS.items():
        if field not in _NO_FLAG:
            parser.add_argument(
                "--" + field.replace("_", "-"), dest=field, metavar="VALUE", help=f"(${variable})"
            )
    overrides = vars(parser.parse_args(argv))
    return Settings.from_env(env, **overrides)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover  # uvloop is a dependency on every supported platform
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exit 2 on bad settings (TLS files included), 1 when a port cannot be
    bound or the store cannot be used (taken, damaged, not writable), else 0."""
    try:
        settings = parse_args(argv, os.environ)
        load_server_tls(settings)  # unusable TLS files are bad settings too
    except ConfigError as exc:
        print(logs.early_line(f"service-discovery: {exc}", os.environ), file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(settings))
    except ConfigError as exc:  # a TLS file that changed since
        print(logs.early_line(f"service-discovery: {exc}", os.environ), file=sys.stderr)
        sys.exit(2)
    except (OSError, RuntimeError) as exc:
        log.error("Cannot start: %s", exc)
        sys.exit(1)
