"""A proxyless gRPC client of `xds:///SERVICE`, run as a subprocess by the xDS tests.

The bootstrap comes from GRPC_XDS_BOOTSTRAP_CONFIG. Each line read from stdin is a number N:
the client makes N calls of /echo.Echo/Who and prints one JSON line counting the replies by
backend id (failed calls count under "error").
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import grpc

METHOD = "/echo.Echo/Who"


def main() -> None:
    target = sys.argv[1]
    with grpc.insecure_channel(target) as channel:
        who = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            counts: Counter[str] = Counter()
            for _ in range(int(line)):
                try:
                    reply = who(b"", timeout=5, wait_for_ready=False)
                    counts[reply.decode()] += 1
                except grpc.RpcError as exc:
                    counts["error"] += 1
                    counts["last_error"] = 0
                    print(json.dumps({"debug": str(exc.details())}), file=sys.stderr, flush=True)
            print(json.dumps(dict(counts)), flush=True)


if __name__ == "__main__":
    main()
