"""`discoveryctl`'s arguments, the channel it opens and its exit status.

Options are taken before or after the subcommand: each subcommand's parser repeats them with
defaults suppressed, so a value given after the subcommand wins and one given before is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
from collections.abc import Mapping, Sequence

import grpc

from discovery.client import TLSFiles, open_channel
from discovery.ctl.commands import COMMANDS, Context, NotServing

OK, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
DEFAULT_SERVER = "127.0.0.1:50051"

#: Codes that mean the server was never reached (or the TLS handshake failed).
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=default(None),
        help=f"gRPC address of the server ($DISCOVERY_SERVER, default {DEFAULT_SERVER})",
    )
    group.add_argument("--ca", metavar="FILE", default=default(None), help="CA of the server (TLS)")
    group.add_argument(
        "--cert", metavar="FILE", default=default(None), help="client certificate (mutual TLS)"
    )
    group.add_argument("--key", metavar="FILE", default=default(None), help="its private key")
    group.add_argument(
        "--json", action="store_true", default=default(False), help="print the REST API's JSON"
    )
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default(10.0),
        help="deadline of each call (default 10)",
    )


def _meta(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand and option."""
    parser = argparse.ArgumentParser(
        prog="discoveryctl",
        description="Look at and change a service discovery server over gRPC. The write secret "
        "comes from $SERVICE_DISCOVERY_SECRET.",
    )
    _options(parser, suppress=False)
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {importlib.metadata.version('service-discovery')}",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _options(sub, suppress=True)
        return sub

    command("services", "every service and its instances")
    get = command("get", "the instances of one service")
    get.add_argument("service", metavar="SERVICE")
    get.add_argument("--healthy", action="store_true", help="healthy instances only")
    watch = command("watch", "print every change until interrupted")
    watch.add_argument("services", metavar="SERVICE", nargs="*", help="none: every service")
    watch.add_argument("--healthy", action="store_true", help="follow the healthy set only")
    register = command("register", "register (or update) an instance")
    register.add_argument("service", metavar="SERVICE")
    register.add_argument("instance", metavar="INSTANCE")
    register.add_argument("host", metavar="HOST")
    register.add_argument("port", metavar="PORT", type=int)
    probe = register.add_mutually_exclusive_group()
    probe.add_argument(
        "--health-endpoint", metavar="PATH", help="path the server probes (default /health)"
    )
    probe.add_argument(
        "--no-health-endpoint",
        dest="health_endpoint",
        action="store_const",
        const="",
        help="no probe: the instance lives on heartbeats alone",
    )
    register.add_argument(
        "--meta", metavar="K=V", type=_meta, action="append", default=[], help="metadata entry"
    )
    heartbeat = command("heartbeat", "send one heartbeat")
    heartbeat.add_argument("service", metavar="SERVICE")
    heartbeat.add_argument("instance", metavar="INSTANCE")
    heartbeat.add_argument("--load", type=float, metavar="X", help="load to report, 0..1")
    unregister = command("unregister", "remove an instance")
    unregister.add_argument("service", metavar="SERVICE")
    unregister.add_argument("instance", metavar="INSTANCE")
    command("alerts", "the instances at critical load")
    command("health", "the server's own health (grpc.health.v1)")
    return parser


def _channel(args: argparse.Namespace, env: Mapping[str, str]) -> grpc.aio.Channel:
    target = args.server or env.get("DISCOVERY_SERVER") or DEFAULT_SERVER
    tls = TLSFiles.of(args.ca, args.cert, args.key, tls=False)
    return open_channel(target, tls)


async def run(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Run the subcommand `args` name."""
    secret = env.get("SERVICE_DISCOVERY_SECRET")
    metadata = (("authorization", f"Bearer {secret}"),) if secret else ()
    channel = _channel(args, env)
    try:
        context = Context(channel, metadata, args.json, args.timeout)
        await COMMANDS[args.command](args, context)
    finally:
        await channel.close(None)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; exits 0, 1 (refused), 2 (usage), 3 (unreachable)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        tls = TLSFiles.of(args.ca, args.cert, args.key, tls=False)
        if tls is not None:
            tls.credentials()  # reads the files: a missing one is a usage error
    except ValueError:
        parser.error("--cert and --key go together")
    except OSError as exc:
        parser.error(f"cannot read {exc.filename}: {exc.strerror}")
    try:
        asyncio.run(run(args, os.environ))
    except KeyboardInterrupt:
        # watch runs until interrupted: that is how it ends, not a failure.
        sys.exit(OK if args.command == "watch" else 130)
    except BrokenPipeError:
        # The reader went away (`discoveryctl watch | head`): done, without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(OK)
    except grpc.aio.AioRpcError as exc:
        sys.exit(_failure(exc))
    except NotServing as exc:
        print(f"discoveryctl: the server is {exc}", file=sys.stderr)
        sys.exit(REFUSED)


def _failure(exc: grpc.aio.AioRpcError) -> int:
    code = exc.code()
    detail = exc.details() or code.name
    if code in _UNREACHABLE:
        print(f"discoveryctl: cannot reach the server: {detail}", file=sys.stderr)
        return UNREACHABLE
    print(f"discoveryctl: {code.name}: {detail}", file=sys.stderr)
    return REFUSED
