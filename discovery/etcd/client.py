"""A small asyncio client of etcd's v3 API, on the generated stubs that `aetcd` ships.

`aetcd.Client` talks to one endpoint without TLS; replicas need a list of endpoints (a member
can die), TLS and user/password auth, so this client drives the same stubs itself: one channel
per endpoint, the current one kept until it fails, then the next. Every unary call has a
deadline; failures become `EtcdError`, which the store turns into refused writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aetcd import rpc

log = logging.getLogger("discovery.etcd")

#: How long one unary call may take before the write is refused.
CALL_TIMEOUT = 3.0
_CHANNEL_OPTIONS = [
    # A member that vanished without closing its connections is noticed by keepalive pings
    # (etcd allows one every 5 s by default).
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 3000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# A member cut off from its cluster ends watches instead of leaving them silent.
_REQUIRE_LEADER = ("hasleader", "true")


_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs does not declare it


class EtcdError(Exception):
    """etcd did not answer, or refused the call."""


class Compacted(EtcdError):
    """A watch asked for history etcd has compacted away."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted up to {revision}")
        self.revision = revision


@dataclass(frozen=True, slots=True)
class Tls:
    """Client TLS files (CA alone, or CA with a client certificate and key)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as handle:
                return handle.read()

        return grpc.ssl_channel_credentials(
            read(self.ca_file), read(self.key_file), read(self.cert_file)
        )


def prefix_end(prefix: bytes) -> bytes:
    """The end of the key range that holds exactly the keys starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdClient:
    """Calls on one etcd cluster through whichever of its endpoints answers."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        tls: Tls | None = None,
    ) -> None:
        self._endpoints = list(endpoints)
        self._username = username
        self._password = password
        self._tls = tls
        self._current = 0
        self._channels: dict[int, grpc.aio.Channel] = {}
        # A stub builds a callable per method (about 9 us): one of each kind per channel.
        self._stubs: dict[tuple[Any, int], Any] = {}
        self._token: str | None = None

    # -- plumbing -----------------------------------------------------------------------------

    def _channel(self) -> grpc.aio.Channel:
        index = self._current
        channel = self._channels.get(index)
        if channel is None:
            target = self._endpoints[index]
            if self._tls is not None:
                channel = grpc.aio.secure_channel(
                    target, self._tls.credentials(), options=_CHANNEL_OPTIONS
                )
            else:
                channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            self._channels[index] = channel
        return channel

    def _stub(self, stub_type: Any) -> Any:
        key = (stub_type, self._current)
        stub = self._stubs.get(key)
        if stub is None:
            stub = self._stubs[key] = stub_type(self._channel())
        return stub

    def _failover(self) -> None:
        """The current endpoint failed: the next call tries the next one."""
        if len(self._endpoints) > 1:
            self._current = (self._current + 1) % len(self._endpoints)

    def _metadata(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        token = () if self._token is None else (("token", self._token),)
        return (*token, *extra)

    async def _authenticate(self) -> None:
        if self._username is None:
            return
        stub = rpc.AuthStub(self._channel())
        request = rpc.AuthenticateRequest(name=self._username, password=self._password or "")
        reply = await stub.Authenticate(request, timeout=CALL_TIMEOUT)
        self._token = reply.token

    async def _call(self, stub_type: Any, method: str, request: Any) -> Any:
        """One unary call, re-authenticated once on an expired token, failed over once."""
        for attempt in range(3):
            try:
                if self._username is not None and self._token is None:
                    await self._authenticate()
                stub = self._stub(stub_type)
                return await getattr(stub, method)(
                    request, timeout=CALL_TIMEOUT, metadata=self._metadata()
                )
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code is grpc.StatusCode.UNAUTHENTICATED and attempt == 0:
                    self._token = None
                    continue
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self._failover()
                    if attempt == 0 and len(self._endpoints) > 1:
                        continue
                raise EtcdError(f"etcd {method}: {code.name} {exc.details()}") from None
        raise EtcdError(f"etcd {method}: no answer")

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._stubs.clear()
        for channel in channels:
            await channel.close(None)

    # -- the calls ----------------------------------------------------------------------------

    async def range_prefix(self, prefix: bytes) -> tuple[int, list[Any]]:
        """Every key under `prefix` (linearizable): the store's revision and the key-values."""
        request = rpc.RangeRequest(key=prefix, range_end=prefix_end(prefix))
        reply = await self._call(rpc.KVStub, "Range", request)
        return int(reply.header.revision), list(reply.kvs)

    async def get(self, key: bytes) -> Any | None:
        """The key-value of `key`, or None."""
        reply = await self._call(rpc.KVStub, "Range", rpc.RangeRequest(key=key))
        return reply.kvs[0] if reply.kvs else None

    async def txn(self, request: Any) -> Any:
        """A transaction (`rpc.TxnRequest`); returns the `TxnResponse`."""
        return await self._call(rpc.KVStub, "Txn", request)

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        reply = await self._call(
            rpc.KVStub, "Put", rpc.PutRequest(key=key, value=value, lease=lease)
        )
        return int(reply.header.revision)

    async def delete(self, key: bytes) -> int:
        reply = await self._call(rpc.KVStub, "DeleteRange", rpc.DeleteRangeRequest(key=key))
        return int(reply.header.revision)

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; returns its id."""
        reply = await self._call(rpc.LeaseStub, "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl))
        if reply.error:
            raise EtcdError(f"etcd LeaseGrant: {reply.error}")
        return int(reply.ID)

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease` once; returns its new TTL (0 or less: the lease is gone)."""
        request = rpc.LeaseKeepAliveRequest(ID=lease)
        try:
            if self._username is not None and self._token is None:
                await self._authenticate()
            stub = rpc.LeaseStub(self._channel())
            call = stub.LeaseKeepAlive(timeout=CALL_TIMEOUT, metadata=self._metadata())
            await call.write(request)
            reply = await call.read()
            call.cancel()
        except grpc.aio.AioRpcError as exc:
            self._failover()
            raise EtcdError(f"etcd LeaseKeepAlive: {exc.code().name}") from None
        if reply is _EOF:
            raise EtcdError("etcd LeaseKeepAlive: stream ended")
        return int(reply.TTL)

    async def revoke(self, lease: int) -> None:
        await self._call(rpc.LeaseStub, "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[Any]:
        """Watch every key under `prefix` from `start_revision` on: yields each response with
        events (and etcd's progress notifications). Raises `Compacted` or `EtcdError` when
        the watch cannot go on; the caller starts a new one."""
        try:
            if self._username is not None and self._token is None:
                await self._authenticate()
            stub = rpc.WatchStub(self._channel())
            call = stub.Watch(metadata=self._metadata(_REQUIRE_LEADER))
            create = rpc.WatchCreateRequest(
                key=prefix,
                range_end=prefix_end(prefix),
                start_revision=start_revision,
                progress_notify=True,
            )
            await call.write(rpc.WatchRequest(create_request=create))
            try:
                while True:
                    reply = await call.read()
                    if reply is _EOF:
                        raise EtcdError("etcd watch ended")
                    if reply.compact_revision:
                        raise Compacted(int(reply.compact_revision))
                    if reply.canceled:
                        raise EtcdError(f"etcd watch canceled: {reply.cancel_reason}")
                    yield reply
            finally:
                call.cancel()
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                self._token = None
            else:
                self._failover()
            raise EtcdError(f"etcd watch: {exc.code().name} {exc.details()}") from None


async def wait_cancelled(task: asyncio.Task[Any], within: float = 2.0) -> None:
    """Cancel `task` and wait (at most `within` seconds) for it to end."""
    task.cancel()
    await asyncio.wait([task], timeout=within)
