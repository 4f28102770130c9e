"""Requests decoded by the handlers themselves, so a malformed one gets INVALID_ARGUMENT.

grpc.aio decodes a request with the method's deserializer before the handler runs; when that
raises (invalid UTF-8 in a string field, truncated or corrupt wire bytes) the call ends with
UNKNOWN "Unexpected DecodeError" and grpc logs a traceback per call: anyone could fill the disk.
`DecodingRegistrar` registers every method with no deserializer (the handler receives the raw
bytes) and wraps its behaviour to decode them first: a request that does not decode ends the
call with INVALID_ARGUMENT and a short message, and is logged at most once per interval with a
count (`discovery.ratelimit`). Streamed requests are decoded as they are read; KeepAlive reads
through its context and decodes there (`discovery.rpc.streams`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from discovery.ratelimit import RateLimitedLog

log = logging.getLogger("discovery.rpc")

Context = grpc.aio.ServicerContext[Any, Any]
Parse = Callable[[bytes], Any]


class Malformed(ValueError):
    """A request that does not decode; its message is short and safe to send back."""


def decode(parse: Parse, raw: bytes) -> Any:
    """`parse(raw)`, or `Malformed` saying why not."""
    try:
        return parse(raw)
    except Exception as exc:  # protobuf raises DecodeError; anything else is as malformed
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise Malformed(f"malformed request: {reason}") from None


class DecodingRegistrar:
    """Hands generated registrations to `server` with every method decoding its own request;
    `serializers` replaces the response serializer of the named methods (Watch sends bytes)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        log_interval: float,
        serializers: dict[str, Callable[[Any], bytes]] | None = None,
    ) -> None:
        self._server = server
        self._serializers = serializers or {}
        self._log = RateLimitedLog(log, log_interval)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: `add_registered_method_handlers` registers the same table, wrapped."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        wrapped = {name: self._wrap(name, handler) for name, handler in handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        # Missing from grpc-stubs; grpcio has had it since 1.63 and the generated code calls it.
        self._server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]

    def malformed(self, method: str, error: Malformed) -> None:
        """Log a malformed request, at most once per interval."""
        self._log.warning("Malformed gRPC requests refused (last: %s, %s)", method, error)

    def _wrap(self, name: str, handler: grpc.RpcMethodHandler[Any, Any]) -> Any:
        parse = handler.request_deserializer
        serializer = self._serializers.get(name, handler.response_serializer)
        behaviour = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        asynchronous = inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(
            behaviour
        )
        if parse is None or not asynchronous:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(name, parse, handler.unary_unary), None, serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary(name, parse, handler.unary_stream), None, serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._streamed(name, parse, handler.stream_unary), None, serializer
            )
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._streamed(name, parse, handler.stream_stream), None, serializer
        )

    def _unary(self, name: str, parse: Parse, behaviour: Any) -> Any:
        """The behaviour of a one-request method, decoding the request first."""

        async def request(raw: bytes, context: Context) -> Any:
            try:
                return decode(parse, raw)
            except Malformed as exc:
                self.malformed(name, exc)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        if inspect.isasyncgenfunction(behaviour):

            async def generator(raw: bytes, context: Context) -> AsyncIterator[Any]:
                async for response in behaviour(await request(raw, context), context):
                    yield response

            return generator

        async def coroutine(raw: bytes, context: Context) -> Any:
            return await behaviour(await request(raw, context), context)

        return coroutine

    def _streamed(self, name: str, parse: Parse, behaviour: Any) -> Any:
        """The behaviour of a streamed-request method, decoding each request as it is read."""

        async def requests(raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
            async for raw in raws:
                try:
                    yield decode(parse, raw)
                except Malformed as exc:
                    self.malformed(name, exc)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        if inspect.isasyncgenfunction(behaviour):

            async def generator(raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
                async for response in behaviour(requests(raws, context), context):
                    yield response

            return generator

        async def coroutine(raws: AsyncIterator[bytes], context: Context) -> Any:
            return await behaviour(requests(raws, context), context)

        return coroutine
