"""The protocol-neutral core: settings, errors, model, clock, validation, auth, the registry and
the facade (`discovery.core.facade.DiscoveryCore`) that every adapter calls.

Subpackages: `store` (where state becomes durable), `watch` (the hub and its watchers),
`health` (probes, flap damping, critical-load alerts, the webhook). Nothing here imports an
adapter, grpc or fastapi; import-linter checks that in `make lint`.
"""
