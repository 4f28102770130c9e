"""A bare grpc.aio DiscoveryService: Register and Heartbeat against a plain dict, no auth.

python -m bench.baselines.bare_grpc     # prints "gRPC listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc
import uvloop

from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc


class Bare(pb_grpc.DiscoveryServiceServicer):
    def __init__(self) -> None:
        self.store: dict[tuple[str, str], pb.Instance] = {}

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        instance = pb.Instance(
            service_name=request.service_name,
            instance_id=request.instance_id,
            host=request.host,
            port=request.port,
            metadata=request.metadata,
        )
        self.store[(request.service_name, request.instance_id)] = instance
        return pb.RegisterResponse(instance=instance)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        instance = self.store[(request.service_name, request.instance_id)]
        return pb.HeartbeatResponse(instance=instance)


async def main() -> None:
    server = grpc.aio.server()
    pb_grpc.add_DiscoveryServiceServicer_to_server(Bare(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"gRPC listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    uvloop.run(main())
