"""The gRPC adapter: the discovery.v1 servicer, its streams (Watch, KeepAlive), the protobuf
codec, the mapping of core errors to status codes, and grpc.health.v1. Translation only."""
