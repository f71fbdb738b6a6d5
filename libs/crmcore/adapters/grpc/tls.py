"""gRPC transport security from the settings: server and channel credentials.

- `server_credentials`: TLS of a service's port from `ServerTlsSettings`; with a client CA the
  server requires and verifies a client certificate signed by it (mutual TLS).
- `channel_credentials` / `channel_options`: what a client channel needs for
  `ClientTlsSettings` (the CA to trust, else the system's; a client certificate for mTLS; the
  name to expect in the server's certificate when it is not the dialled host).

The PEM files are read and checked in `crmcore.config` (a missing, unreadable or mismatched file
is a `ConfigurationError` naming its variable); this module only hands their contents to gRPC.
"""

from __future__ import annotations

from typing import Any

import grpc

from crmcore.config import ClientTlsSettings, ServerTlsSettings


def server_credentials(settings: ServerTlsSettings) -> grpc.ServerCredentials:
    """TLS for a server port; mutual TLS when `settings.client_ca` is set."""
    return grpc.ssl_server_credentials(
        [(settings.private_key, settings.cert_chain)],
        root_certificates=settings.client_ca,
        require_client_auth=settings.mutual,
    )


def channel_credentials(settings: ClientTlsSettings) -> grpc.ChannelCredentials:
    """TLS for a client channel: `settings.ca` (None: the system's CAs), client certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=settings.ca,
        private_key=settings.private_key,
        certificate_chain=settings.cert_chain,
    )


def channel_options(settings: ClientTlsSettings) -> list[tuple[str, Any]]:
    """Channel options TLS needs: the expected server name, when configured."""
    if settings.server_name is None:
        return []
    return [("grpc.ssl_target_name_override", settings.server_name)]
