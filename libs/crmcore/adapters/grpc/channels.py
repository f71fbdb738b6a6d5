"""Client channels to the services: the one way code in this repository opens one.

`open_channel` (grpc.aio) and `open_blocking_channel` (synchronous grpc) add
`authorization: Bearer <token>` metadata to every call, unary or streaming, through a client
interceptor (call credentials would need a secure channel). Transport security is the `tls`
parameter's job: given `ClientTlsSettings`, the channel is a TLS one (the configured CA, a client
certificate for mutual TLS); without, plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from crmcore.adapters.grpc.access import AUTHORIZATION
from crmcore.adapters.grpc.tls import channel_credentials, channel_options
from crmcore.config import ClientTlsSettings

#: Options of every client channel (the servers accept messages of this size, too).
DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = ()


def authorization_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata a call carries to authenticate with `token` (a bearer string)."""
    return ((AUTHORIZATION, f"Bearer {token}"),)


def _with_token(details: Any, token_metadata: tuple[tuple[str, str], ...]) -> Any:
    metadata = tuple(details.metadata or ()) + token_metadata
    return details._replace(metadata=metadata)


class _AsyncBearer:
    """Adds the bearer metadata to a grpc.aio call (the base of one interceptor per kind:
    a grpc.aio channel files each interceptor object under one kind of call only)."""

    def __init__(self, token: str) -> None:
        self._metadata = authorization_metadata(token)


class _AsyncUnaryUnaryBearer(_AsyncBearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._metadata), request)


class _AsyncUnaryStreamBearer(_AsyncBearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._metadata), request)


class _AsyncStreamUnaryBearer(_AsyncBearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(
            _with_token(client_call_details, self._metadata), request_iterator
        )


class _AsyncStreamStreamBearer(_AsyncBearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(
            _with_token(client_call_details, self._metadata), request_iterator
        )


def _async_bearers(token: str) -> list[Any]:
    return [
        kind(token)
        for kind in (
            _AsyncUnaryUnaryBearer,
            _AsyncUnaryStreamBearer,
            _AsyncStreamUnaryBearer,
            _AsyncStreamStreamBearer,
        )
    ]


class _BlockingBearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the bearer metadata to every call of a synchronous channel."""

    def __init__(self, token: str) -> None:
        self._metadata = authorization_metadata(token)

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(_with_token(client_call_details, self._metadata), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(_with_token(client_call_details, self._metadata), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(_with_token(client_call_details, self._metadata), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(_with_token(client_call_details, self._metadata), request_iterator)


def open_channel(
    address: str,
    *,
    token: str | None = None,
    tls: ClientTlsSettings | None = None,
    options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
) -> grpc.aio.Channel:
    """A grpc.aio channel to `address` whose calls carry `token` (None: no token, e.g. health
    probes); over TLS when `tls` is given (`crmcore.config.client_tls_from_env`).
    Use it as `async with open_channel(...) as channel:`."""
    interceptors: list[Any] = [] if token is None else _async_bearers(token)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(
        address,
        channel_credentials(tls),
        options=[*options, *channel_options(tls)],
        interceptors=interceptors,
    )


def open_blocking_channel(
    address: str,
    *,
    token: str | None = None,
    tls: ClientTlsSettings | None = None,
    options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
) -> grpc.Channel:
    """The synchronous twin of `open_channel` (CLI commands, threads, benchmarks)."""
    if tls is None:
        channel = grpc.insecure_channel(address, options=list(options))
    else:
        channel = grpc.secure_channel(
            address, channel_credentials(tls), options=[*options, *channel_options(tls)]
        )
    if token is None:
        return channel
    return grpc.intercept_channel(channel, _BlockingBearer(token))
