"""The server's TLS material, read once at start-up and handed to both servers.

`SERVICE_DISCOVERY_TLS_CERT_FILE` and `SERVICE_DISCOVERY_TLS_KEY_FILE` make both ports serve TLS
only; `SERVICE_DISCOVERY_TLS_CLIENT_CA_FILE` makes both require a client certificate signed by
that CA. A file that is missing, unreadable or not what it should be is a `ConfigError` naming
its variable (exit status 2), raised before any port is bound.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import grpc

from discovery.core.settings import ENV_VARS, ConfigError, Settings


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """PEM files (paths and contents) of the server certificate, its key and the client CA."""

    cert_file: str
    key_file: str
    client_ca_file: str | None
    cert: bytes
    key: bytes
    client_ca: bytes | None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port`: TLS only, mutual when a client CA is given."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments of `uvicorn.Config` for the same TLS on the REST port."""
        options: dict[str, Any] = {"ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}
        if self.client_ca_file is not None:
            options["ssl_ca_certs"] = self.client_ca_file
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        return options


def load_server_tls(settings: Settings) -> ServerTLS | None:
    """The TLS material `settings` name (None without TLS); `ConfigError` when it is unusable."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _read("tls_cert_file", settings.tls_cert_file)
    key = _read("tls_key_file", settings.tls_key_file)
    client_ca = None
    if settings.tls_client_ca_file is not None:
        client_ca = _read("tls_client_ca_file", settings.tls_client_ca_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            ENV_VARS["tls_cert_file"],
            f"cannot use {settings.tls_cert_file!r} with the key in "
            f"{ENV_VARS['tls_key_file']} ({exc})",
        ) from None
    if settings.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(settings.tls_client_ca_file)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                ENV_VARS["tls_client_ca_file"],
                f"no CA certificate in {settings.tls_client_ca_file!r} ({exc})",
            ) from None
    return ServerTLS(
        settings.tls_cert_file,
        settings.tls_key_file,
        settings.tls_client_ca_file,
        cert,
        key,
        client_ca,
    )


def _read(field: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(ENV_VARS[field], f"cannot read {path!r}: {exc.strerror}") from None
