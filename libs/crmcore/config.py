"""The one place that reads the environment.

Everything configurable is read here into typed settings; the rest of the code (library,
services, benchmarks) receives settings objects and never looks at `os.environ` itself.

Persistence (ARCHITECTURE.md, "Storage"):
- `CRM_PERSISTENCE`: `memory` (default for the library), `sqlite` (embedded default of the
  services) or `postgres` (production).
- `CRM_DATA_DIR`: where SQLite files live, one per application (default `.crm-data`).
- The eventsourcing library's own variables pass through unchanged, optionally prefixed by the
  upper-cased application name: `POSTGRES_DBNAME`, `POSTGRES_HOST`, `POSTGRES_PORT`,
  `POSTGRES_USER`, `POSTGRES_PASSWORD`, `POSTGRES_SCHEMA`, `POSTGRES_POOL_SIZE`, `CIPHER_KEY`, …
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from crmcore.domain.access import is_bearer

PersistenceKind = Literal["memory", "sqlite", "postgres"]
PERSISTENCE_KINDS: tuple[PersistenceKind, ...] = ("memory", "sqlite", "postgres")

_PERSISTENCE_MODULES: dict[PersistenceKind, str] = {
    "memory": "eventsourcing.popo",
    "sqlite": "eventsourcing.sqlite",
    # The library's factory plus libpq's TLS parameters (`POSTGRES_SSLMODE`, …).
    "postgres": "crmcore.adapters.postgres:TlsPostgresFactory",
}

# Library variables passed through to each application (with or without an application prefix).
_PASSED_THROUGH = ("POSTGRES_", "SQLITE_", "CIPHER_", "COMPRESSOR_", "SINGLE_ROW_TRACKING")


class ConfigurationError(ValueError):
    """A setting in the environment has a value that cannot be used."""


class PersistenceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how the event store of every application is kept."""

    kind: PersistenceKind = "memory"
    data_dir: Path = Path(".crm-data")
    library_env: dict[str, str] = msgspec.field(default_factory=dict)

    @classmethod
    def in_memory(cls) -> PersistenceSettings:
        return cls(kind="memory")

    @classmethod
    def sqlite(cls, data_dir: Path | str) -> PersistenceSettings:
        return cls(kind="sqlite", data_dir=Path(data_dir))

    @classmethod
    def postgres(
        cls,
        *,
        dbname: str,
        host: str = "127.0.0.1",
        port: int = 5432,
        user: str = "postgres",
        password: str = "",
        schema: str = "",
        pool_size: int = 5,
        sslmode: str = "",
        sslrootcert: str = "",
        sslcert: str = "",
        sslkey: str = "",
    ) -> PersistenceSettings:
        tls = {
            "POSTGRES_SSLMODE": sslmode,
            "POSTGRES_SSLROOTCERT": sslrootcert,
            "POSTGRES_SSLCERT": sslcert,
            "POSTGRES_SSLKEY": sslkey,
        }
        return cls(
            kind="postgres",
            library_env={
                "POSTGRES_DBNAME": dbname,
                "POSTGRES_HOST": host,
                "POSTGRES_PORT": str(port),
                "POSTGRES_USER": user,
                "POSTGRES_PASSWORD": password,
                "POSTGRES_SCHEMA": schema,
                "POSTGRES_POOL_SIZE": str(pool_size),
                **{key: value for key, value in tls.items() if value},
            },
        )

    def application_env(self, application_name: str) -> dict[str, str]:
        """The eventsourcing environment of the application called `application_name`."""
        env = dict(self.library_env)
        env["PERSISTENCE_MODULE"] = _PERSISTENCE_MODULES[self.kind]
        if self.kind == "sqlite":
            self.data_dir.mkdir(parents=True, exist_ok=True)
            env.setdefault(
                f"{application_name.upper()}_SQLITE_DBNAME",
                str(self.data_dir / f"{application_name}.sqlite"),
            )
            env.setdefault("SQLITE_LOCK_TIMEOUT", "10")
        if self.kind == "postgres":
            # The library defaults are made for one process; a service under load needs room.
            env.setdefault("POSTGRES_POOL_SIZE", "5")
            env.setdefault("POSTGRES_MAX_OVERFLOW", "10")
            env.setdefault("POSTGRES_CONNECT_TIMEOUT", "5")
        return env


def _persistence_from(
    environ: Mapping[str, str], default_kind: PersistenceKind = "memory"
) -> PersistenceSettings:
    kind = environ.get("CRM_PERSISTENCE", default_kind).strip().lower() or default_kind
    if kind not in PERSISTENCE_KINDS:
        raise ConfigurationError(
            f"CRM_PERSISTENCE={kind!r}: expected one of {', '.join(PERSISTENCE_KINDS)}"
        )
    library_env = {
        key: value for key, value in environ.items() if any(part in key for part in _PASSED_THROUGH)
    }
    if kind == "postgres" and not any(key.endswith("POSTGRES_DBNAME") for key in library_env):
        raise ConfigurationError("CRM_PERSISTENCE=postgres needs POSTGRES_DBNAME (and _HOST, …)")
    _check_postgres_tls(library_env)
    _check_cipher_keys(library_env)
    return PersistenceSettings(
        kind=kind,
        data_dir=Path(environ.get("CRM_DATA_DIR", ".crm-data")),
        library_env=library_env,
    )


_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_postgres_tls(library_env: Mapping[str, str]) -> None:
    """`POSTGRES_SSLMODE` (any prefix) is a libpq mode; the TLS files it names are readable."""
    for key, value in library_env.items():
        if key.endswith("POSTGRES_SSLMODE") and value.strip() not in ("", *_SSL_MODES):
            raise ConfigurationError(f"{key}={value!r}: expected one of {', '.join(_SSL_MODES)}")
        # `sslrootcert=system` (libpq 16+) means the system's CAs, not a file.
        is_file = value.strip() != "system" or not key.endswith("POSTGRES_SSLROOTCERT")
        if (
            key.endswith(("POSTGRES_SSLROOTCERT", "POSTGRES_SSLCERT", "POSTGRES_SSLKEY"))
            and is_file
        ):
            _read_file(library_env, key)


def _check_cipher_keys(library_env: Mapping[str, str]) -> None:
    """`CIPHER_KEY` (any prefix): base64 of 16, 24 or 32 random bytes (`crm keys generate`)."""
    for key, value in library_env.items():
        if not key.endswith("CIPHER_KEY") or not value.strip():
            continue
        try:
            size = len(base64.b64decode(value.strip(), validate=True))
        except ValueError:
            size = -1
        if size not in (16, 24, 32):
            raise ConfigurationError(
                f"{key}: expected base64 of 16, 24 or 32 bytes (make one with `crm keys generate`)"
            )


def persistence_from_env(
    environ: Mapping[str, str] | None = None, *, default_kind: PersistenceKind = "memory"
) -> PersistenceSettings:
    """Persistence settings from the environment (or the given mapping, for tests)."""
    return _persistence_from(os.environ if environ is None else environ, default_kind)


# --- Access (tokens; ARCHITECTURE.md, "Security") -------------------------------------------


class AccessSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the services authenticate callers, and which token the `crm` clients send.

    - `CRM_AUTH_CACHE_S`: seconds a successful authentication is remembered (default 5): a
      token revoked by another process stops working within this time (at once in the same
      process).
    - `CRM_AUTH_DEFAULT_RATE_PER_S`: calls per second a token may make when it sets no rate of
      its own (default 1000; bursts of twice that).
    - `CRM_BOOTSTRAP_ADMIN_TOKEN`: a bearer (`crm_<32 hex>_<secret>`) each service registers as
      an `admin` token at start if it is not there yet, e.g. from a Kubernetes Secret.
    - `CRM_TOKEN`: the bearer the `crm` client commands send (else the running stack's
      `admin.token` in `CRM_DATA_DIR`).

    There is no setting that turns authentication off. `generate_admin_token` (true for a
    service started from the environment) makes a service whose token store is empty, with no
    bootstrap token, issue an admin token and print it once rather than be unreachable.
    """

    cache_s: float = 5.0
    default_rate_per_s: float = 1000.0
    bootstrap_admin_token: str | None = None
    client_token: str | None = None
    generate_admin_token: bool = False


def access_from_env(environ: Mapping[str, str] | None = None) -> AccessSettings:
    """Access settings from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    bootstrap = env.get("CRM_BOOTSTRAP_ADMIN_TOKEN", "").strip() or None
    if bootstrap is not None and not is_bearer(bootstrap):
        raise ConfigurationError(
            "CRM_BOOTSTRAP_ADMIN_TOKEN: expected crm_<32 hex digits>_<secret of at least "
            "16 URL-safe characters> (crm tokens create prints one)"
        )
    return AccessSettings(
        cache_s=_number(env, "CRM_AUTH_CACHE_S", 5.0, 0),
        default_rate_per_s=_number(env, "CRM_AUTH_DEFAULT_RATE_PER_S", 1000.0, 0.001),
        bootstrap_admin_token=bootstrap,
        client_token=env.get("CRM_TOKEN", "").strip() or None,
        generate_admin_token=True,
    )


# --- Transport security of the gRPC services (ARCHITECTURE.md, "Security") --------------------


class ServerTlsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TLS of a service's gRPC port (the PEM contents, checked to belong together).

    - `CRM_TLS_CERT_FILE`, `CRM_TLS_KEY_FILE`: the server's certificate (chain) and private key
      in PEM. Both set: the service listens with TLS only; neither: plaintext (development).
    - `CRM_TLS_CLIENT_CA_FILE`: CA certificate(s) in PEM. Set: mutual TLS, every client must
      present a certificate signed by one of them.
    """

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


class ClientTlsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the `crm` clients (and tests) reach TLS services.

    - `CRM_TLS_CA_FILE`: CA certificate(s) in PEM the services' certificates are checked
      against. Set (or `CRM_TLS=on`, which trusts the system's CAs): clients use TLS.
    - `CRM_TLS_CLIENT_CERT_FILE`, `CRM_TLS_CLIENT_KEY_FILE`: the client's certificate and key,
      for services requiring mutual TLS (both or neither).
    - `CRM_TLS_SERVER_NAME`: the name to expect in the services' certificates when it is not
      the host clients dial (e.g. dialling an IP address).
    """

    ca: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None


def _read_file(environ: Mapping[str, str], key: str) -> bytes | None:
    path = environ.get(key, "").strip()
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"{key}={path!r}: cannot read it ({error.strerror})") from None
    if not data.strip():
        raise ConfigurationError(f"{key}={path!r}: the file is empty")
    return data


def _certificates(environ: Mapping[str, str], key: str) -> bytes | None:
    """The PEM certificate(s) of the file `key` names, checked to parse."""
    from cryptography import x509

    data = _read_file(environ, key)
    if data is None:
        return None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise ConfigurationError(
            f"{key}={environ[key].strip()!r}: not a PEM certificate ({error})"
        ) from None
    return data


def _key_pair(
    environ: Mapping[str, str], cert_key: str, key_key: str
) -> tuple[bytes, bytes] | None:
    """Certificate chain and private key, both or neither, checked to belong together."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    cert = _certificates(environ, cert_key)
    key = _read_file(environ, key_key)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing, given = (cert_key, key_key) if cert is None else (key_key, cert_key)
        raise ConfigurationError(f"{given} is set but {missing} is not: set both or neither")
    try:
        private = load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigurationError(
            f"{key_key}={environ[key_key].strip()!r}: not an unencrypted PEM private key ({error})"
        ) from None
    leaf = x509.load_pem_x509_certificates(cert)[0]
    spki = (Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if leaf.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise ConfigurationError(
            f"{key_key}: the key does not match the certificate of {cert_key} "
            f"({environ[cert_key].strip()!r})"
        )
    return cert, key


def server_tls_from_env(environ: Mapping[str, str] | None = None) -> ServerTlsSettings | None:
    """The gRPC server's TLS settings; None when no certificate is configured."""
    env = os.environ if environ is None else environ
    pair = _key_pair(env, "CRM_TLS_CERT_FILE", "CRM_TLS_KEY_FILE")
    client_ca = _certificates(env, "CRM_TLS_CLIENT_CA_FILE")
    if pair is None:
        if client_ca is not None:
            raise ConfigurationError(
                "CRM_TLS_CLIENT_CA_FILE needs CRM_TLS_CERT_FILE and CRM_TLS_KEY_FILE: "
                "mutual TLS is TLS with client certificates"
            )
        return None
    return ServerTlsSettings(cert_chain=pair[0], private_key=pair[1], client_ca=client_ca)


def client_tls_from_env(environ: Mapping[str, str] | None = None) -> ClientTlsSettings | None:
    """The TLS settings the `crm` clients use; None for plaintext."""
    env = os.environ if environ is None else environ
    ca = _certificates(env, "CRM_TLS_CA_FILE")
    pair = _key_pair(env, "CRM_TLS_CLIENT_CERT_FILE", "CRM_TLS_CLIENT_KEY_FILE")
    switch = env.get("CRM_TLS", "").strip().lower()
    if switch not in ("", "on", "off", "true", "false", "1", "0"):
        raise ConfigurationError(f"CRM_TLS={switch!r}: expected on or off")
    wanted = switch in ("on", "true", "1")
    if ca is None and pair is None and not wanted:
        return None
    if switch in ("off", "false", "0"):
        raise ConfigurationError("CRM_TLS=off contradicts the CRM_TLS_* files that are set")
    return ClientTlsSettings(
        ca=ca,
        cert_chain=None if pair is None else pair[0],
        private_key=None if pair is None else pair[1],
        server_name=env.get("CRM_TLS_SERVER_NAME", "").strip() or None,
    )


#: Default cap of one gRPC message, either way (gRPC's own default).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


ServiceName = Literal["customer", "interaction", "routing", "metrics"]
DEFAULT_PORTS: dict[ServiceName, int] = {
    "customer": 50051,
    "interaction": 50052,
    "routing": 50053,
    "metrics": 50054,
}


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How one gRPC service runs: where it listens and where it keeps its data.

    - `CRM_<SERVICE>_ADDRESS`: `host:port` to listen on (default 127.0.0.1 and the service's port:
      customer 50051, interaction 50052, routing 50053, metrics 50054).
    - `CRM_PERSISTENCE` etc. (see above); services default to `sqlite` in `CRM_DATA_DIR`.
    - `CRM_SHUTDOWN_GRACE_S`: seconds in-flight RPCs get on SIGTERM (default 5).
    - `CRM_DEFAULT_REGION`: ISO 3166 region for national phone numbers (e.g. `JP`; default none).
    - `CRM_WORKER_THREADS`: threads running store calls of concurrent RPCs (default 64).
    - `CRM_INDEX_SECRET`: key of the hashes that index contact points (customer service). Set it
      once per installation and never change it: existing contact points are found by it.
      Unset, a development secret is used.
    - `CRM_TLS_CERT_FILE`, `CRM_TLS_KEY_FILE`, `CRM_TLS_CLIENT_CA_FILE`: TLS and mutual TLS of
      the gRPC port (`ServerTlsSettings`).
    - `CRM_GRPC_MAX_MESSAGE_BYTES`: largest gRPC message received or sent (default 4 MiB);
      a larger request is refused with RESOURCE_EXHAUSTED.
    - `CRM_HEALTH_ADDRESS`: `host:port` of a plaintext port serving only the standard health
      service (default none), for probes that cannot speak TLS (Kubernetes' gRPC probes).
    """

    service: ServiceName
    address: str
    persistence: PersistenceSettings
    shutdown_grace_s: float = 5.0
    default_region: str | None = None
    worker_threads: int = 64
    index_secret: bytes | None = None
    #: TLS of the gRPC port; None: plaintext.
    tls: ServerTlsSettings | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    health_address: str | None = None
    #: Authentication of callers (`CRM_AUTH_*`, `CRM_BOOTSTRAP_ADMIN_TOKEN`): AccessSettings.
    access: AccessSettings = AccessSettings()


def service_from_env(
    service: ServiceName, environ: Mapping[str, str] | None = None
) -> ServiceSettings:
    """Settings of `service` from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    region = env.get("CRM_DEFAULT_REGION", "").strip().upper() or None
    return ServiceSettings(
        service=service,
        address=env.get(f"CRM_{service.upper()}_ADDRESS", "").strip()
        or f"127.0.0.1:{DEFAULT_PORTS[service]}",
        persistence=_persistence_from(env, "sqlite"),
        shutdown_grace_s=_number(env, "CRM_SHUTDOWN_GRACE_S", 5.0, 0),
        default_region=region,
        worker_threads=int(_number(env, "CRM_WORKER_THREADS", 64, 1)),
        index_secret=env.get("CRM_INDEX_SECRET", "").encode() or None,
        tls=server_tls_from_env(env),
        max_message_bytes=int(
            _number(env, "CRM_GRPC_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, 1024)
        ),
        health_address=env.get("CRM_HEALTH_ADDRESS", "").strip() or None,
        access=access_from_env(env),
    )


# --- Event bus (ARCHITECTURE.md, "Events on the bus") ------------------------------------------

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class BusSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the NATS JetStream bus is and how the event stream is kept.

    - `NATS_URL`: the server(s) to use, comma-separated. Unset means "not given": the embedded
      stack starts its own server, everything else falls back to `DEFAULT_NATS_URL`.
    - `CRM_STREAM`: name of the stream capturing `crm.>` (default `CRM`).
    - `CRM_STREAM_DUPLICATE_WINDOW_S`: how long JetStream remembers `Nats-Msg-Id`s to drop
      republished events (default 120 s). Consumers stay idempotent: the window is finite.
    - `CRM_STREAM_MAX_AGE_S`: how long events stay in the stream (default 30 days, 0 = forever).
    - `CRM_STREAM_MAX_BYTES`: size cap of the stream, oldest events dropped first (-1 = none).
    - `CRM_RELAY_BATCH`: how many stored events the relay publishes per round (default 1000).

    Credentials (at most one kind): `NATS_USER` + `NATS_PASSWORD`, `NATS_TOKEN`,
    `NATS_CREDS_FILE` (a JWT `.creds` file of a NATS account) or `NATS_NKEY_SEED_FILE` (a file
    holding an NKey user seed). TLS: `NATS_TLS_CA_FILE` (CA the server's certificate is checked
    against; set, or a `tls://` URL, means TLS), `NATS_TLS_CERT_FILE` + `NATS_TLS_KEY_FILE`
    (a client certificate, for servers verifying clients).
    """

    nats_url: str | None = None
    stream: str = "CRM"
    subjects: tuple[str, ...] = ("crm.>",)
    duplicate_window_s: float = 120.0
    max_age_s: float = 30 * 24 * 3600.0
    max_bytes: int = -1
    relay_batch: int = 1000
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @property
    def tls(self) -> bool:
        """Whether connections use TLS (a CA or client certificate given, or `tls://`)."""
        return bool(self.tls_ca_file or self.tls_cert_file) or self.url.startswith("tls://")

    @property
    def url(self) -> str:
        """The configured server URL, or the local default when none was given."""
        return self.nats_url or DEFAULT_NATS_URL

    @property
    def servers(self) -> list[str]:
        return [part.strip() for part in self.url.split(",") if part.strip()]


def _number(environ: Mapping[str, str], key: str, default: float, minimum: float) -> float:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{key}={raw!r}: expected a number") from None
    if value < minimum:
        raise ConfigurationError(f"{key}={raw!r}: must be at least {minimum:g}")
    return value


def bus_from_env(environ: Mapping[str, str] | None = None) -> BusSettings:
    """Event bus settings from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    defaults = BusSettings()
    stream = env.get("CRM_STREAM", "").strip() or defaults.stream
    if not all(ch.isalnum() or ch in "-_" for ch in stream):
        raise ConfigurationError(f"CRM_STREAM={stream!r}: use letters, digits, '-' and '_' only")
    settings = BusSettings(
        nats_url=env.get("NATS_URL", "").strip() or None,
        stream=stream,
        duplicate_window_s=_number(
            env, "CRM_STREAM_DUPLICATE_WINDOW_S", defaults.duplicate_window_s, 1
        ),
        max_age_s=_number(env, "CRM_STREAM_MAX_AGE_S", defaults.max_age_s, 0),
        max_bytes=int(_number(env, "CRM_STREAM_MAX_BYTES", defaults.max_bytes, -1)),
        relay_batch=int(_number(env, "CRM_RELAY_BATCH", defaults.relay_batch, 1)),
    )
    return msgspec.structs.replace(settings, **_nats_security(env))


def _nats_security(env: Mapping[str, str]) -> dict[str, str | None]:
    """NATS credentials and TLS files, checked: one kind of credentials, files readable."""
    values = {
        key: env.get(key, "").strip() or None
        for key in (
            "NATS_USER",
            "NATS_PASSWORD",
            "NATS_TOKEN",
            "NATS_CREDS_FILE",
            "NATS_NKEY_SEED_FILE",
            "NATS_TLS_CA_FILE",
            "NATS_TLS_CERT_FILE",
            "NATS_TLS_KEY_FILE",
        )
    }
    if bool(values["NATS_USER"]) != bool(values["NATS_PASSWORD"]):
        raise ConfigurationError("NATS_USER and NATS_PASSWORD go together: set both or neither")
    kinds = [
        name
        for name, given in (
            ("NATS_USER/NATS_PASSWORD", values["NATS_USER"]),
            ("NATS_TOKEN", values["NATS_TOKEN"]),
            ("NATS_CREDS_FILE", values["NATS_CREDS_FILE"]),
            ("NATS_NKEY_SEED_FILE", values["NATS_NKEY_SEED_FILE"]),
        )
        if given
    ]
    if len(kinds) > 1:
        raise ConfigurationError(f"set one kind of NATS credentials, not {' and '.join(kinds)}")
    _check_creds_file(env, "NATS_CREDS_FILE")
    _check_seed_file(env, "NATS_NKEY_SEED_FILE")
    _certificates(env, "NATS_TLS_CA_FILE")
    _key_pair(env, "NATS_TLS_CERT_FILE", "NATS_TLS_KEY_FILE")
    return {key.removeprefix("NATS_").lower(): value for key, value in values.items()}


#: A user JWT (three base64url parts) and a user NKey seed (base32, `SU` + 56 characters).
_USER_JWT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_USER_SEED = re.compile(rb"SU[A-Z2-7]{56}")


def _check_creds_file(environ: Mapping[str, str], key: str) -> None:
    """The `.creds` file `key` names holds a user JWT and seed where nats-py looks for them.

    nats-py takes the line after the first line naming each (`-----BEGIN NATS USER JWT-----`,
    `-----BEGIN USER NKEY SEED-----`), minus its last character, and checks nothing: without
    the JWT it loops forever (the event loop with it), without the seed it raises a TypeError,
    not a NATS error. So both are checked here, at startup."""
    data = _read_file(environ, key)
    if data is None:
        return
    lines = data.split(b"\n")

    def line_after(marker: bytes) -> bytes:
        # Only a line ending in "\n" is read whole: stop two before the end of the split.
        for index, line in enumerate(lines[:-2]):
            if marker in line:
                return lines[index + 1]
        return b""

    for what, marker, pattern in (
        ("user JWT", b"BEGIN NATS USER JWT", _USER_JWT),
        ("user seed", b"BEGIN USER NKEY SEED", _USER_SEED),
    ):
        if not pattern.fullmatch(line_after(marker)):
            raise ConfigurationError(
                f"{key}={environ[key].strip()!r}: not a NATS credentials file: no {what} on "
                f"the line after -----{marker.decode()}----- (as `nsc` writes them, with Unix "
                "line ends)"
            )


def _check_seed_file(environ: Mapping[str, str], key: str) -> None:
    """The file `key` names holds a user NKey seed (nats-py raises a bare nkeys error else)."""
    data = _read_file(environ, key)
    if data is not None and not _USER_SEED.fullmatch(data.strip()):
        raise ConfigurationError(
            f"{key}={environ[key].strip()!r}: not an NKey user seed (`SU…`, 58 characters)"
        )


def child_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment for a process this one starts (`crm up`): ours, with `overrides`."""
    return {**os.environ, **overrides}


# --- Metrics service (issue 7) -----------------------------------------------------------------

ABANDON_TREATMENTS = ("missed", "excluded", "met_within_threshold", "excluded_within_threshold")
DEFAULT_PROMETHEUS_ADDRESS = "127.0.0.1:9464"


class MetricsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How the metrics service counts and where it exposes Prometheus metrics.

    - `CRM_METRICS_TIME_ZONE`: IANA zone of local days, weeks and months (default `UTC`).
      The read models remember it: changing it needs `crm metrics rebuild`.
    - Default KPI policy (every request may override it): `CRM_METRICS_SL_THRESHOLD_S` (20),
      `CRM_METRICS_SL_ABANDONS` (`missed`, `excluded`, `met_within_threshold`,
      `excluded_within_threshold`; default `missed`), `CRM_METRICS_SHORT_ABANDON_S` (0),
      `CRM_METRICS_FCR_WINDOW_DAYS` (7), `CRM_METRICS_BOT_REPEAT_HOURS` (24),
      `CRM_METRICS_FIRST_RESPONSE_TARGET_S` (3600), `CRM_METRICS_RESOLUTION_TARGET_S` (86400).
    - `CRM_METRICS_PROMETHEUS_ADDRESS`: `host:port` of the `/metrics` endpoint (default
      127.0.0.1:9464; `off` disables it).
    - `CRM_METRICS_BATCH`: events fetched and committed per transaction (default 1000).
    """

    time_zone: str = "UTC"
    sl_threshold_s: int = 20
    sl_abandons: str = "missed"
    short_abandon_s: int = 0
    fcr_window_days: int = 7
    bot_repeat_hours: int = 24
    first_response_target_s: int = 3600
    resolution_target_s: int = 86400
    prometheus_address: str | None = DEFAULT_PROMETHEUS_ADDRESS
    batch: int = 1000


def metrics_from_env(environ: Mapping[str, str] | None = None) -> MetricsSettings:
    """Metrics settings from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    defaults = MetricsSettings()
    abandons = env.get("CRM_METRICS_SL_ABANDONS", "").strip().lower() or defaults.sl_abandons
    if abandons not in ABANDON_TREATMENTS:
        raise ConfigurationError(
            f"CRM_METRICS_SL_ABANDONS={abandons!r}: expected one of {', '.join(ABANDON_TREATMENTS)}"
        )
    prometheus = env.get("CRM_METRICS_PROMETHEUS_ADDRESS", DEFAULT_PROMETHEUS_ADDRESS).strip()
    return MetricsSettings(
        time_zone=env.get("CRM_METRICS_TIME_ZONE", "").strip() or defaults.time_zone,
        sl_threshold_s=int(_number(env, "CRM_METRICS_SL_THRESHOLD_S", defaults.sl_threshold_s, 0)),
        sl_abandons=abandons,
        short_abandon_s=int(
            _number(env, "CRM_METRICS_SHORT_ABANDON_S", defaults.short_abandon_s, 0)
        ),
        fcr_window_days=int(
            _number(env, "CRM_METRICS_FCR_WINDOW_DAYS", defaults.fcr_window_days, 1)
        ),
        bot_repeat_hours=int(
            _number(env, "CRM_METRICS_BOT_REPEAT_HOURS", defaults.bot_repeat_hours, 1)
        ),
        first_response_target_s=int(
            _number(env, "CRM_METRICS_FIRST_RESPONSE_TARGET_S", defaults.first_response_target_s, 0)
        ),
        resolution_target_s=int(
            _number(env, "CRM_METRICS_RESOLUTION_TARGET_S", defaults.resolution_target_s, 1)
        ),
        prometheus_address=None if prometheus.lower() in ("", "off", "none") else prometheus,
        batch=int(_number(env, "CRM_METRICS_BATCH", defaults.batch, 1)),
    )


# --- The interaction service ------------------------------------------------------------------


class InteractionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What only the interaction service needs.

    - `CRM_SLA_POLICIES`: the SLA policies and their business calendar as JSON (the format of
      `crmcore.domain.sla.policies_from_json`), or `CRM_SLA_POLICIES_FILE`: a file holding it.
      Neither: the built-in policies by priority, Monday–Friday 09:00–18:00 UTC.
    - `CRM_SLA_TICK_S`: how often the SLA scheduler looks for deadlines that passed (default 1 s).
    - `CRM_INTERACTION_STATE_CACHE`: how many aggregates' latest states the service keeps in
      memory so that commands skip reading them back (default 10000; 0: none). Meant for one
      service instance per database: with several, set 0 (queries could otherwise see a
      state another instance changed late; commands stay correct either way).
    """

    sla_policies_json: str | None = None
    sla_tick_s: float = 1.0
    state_cache_size: int = 10_000


def interaction_from_env(environ: Mapping[str, str] | None = None) -> InteractionSettings:
    """Interaction service settings from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    inline = env.get("CRM_SLA_POLICIES", "").strip()
    path = env.get("CRM_SLA_POLICIES_FILE", "").strip()
    if inline and path:
        raise ConfigurationError("set CRM_SLA_POLICIES or CRM_SLA_POLICIES_FILE, not both")
    policies_json: str | None = inline or None
    if path:
        try:
            policies_json = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigurationError(f"CRM_SLA_POLICIES_FILE={path!r}: {error}") from None
    return InteractionSettings(
        sla_policies_json=policies_json,
        sla_tick_s=_number(env, "CRM_SLA_TICK_S", 1.0, 0.01),
        state_cache_size=int(_number(env, "CRM_INTERACTION_STATE_CACHE", 10_000, 0)),
    )


# --- The routing service ----------------------------------------------------------------------


class RoutingSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What only the routing service needs (the engine's policy and its snapshots).

    - `CRM_ROUTING_PRIORITY_WAIT_S`: seconds of waiting one priority point is worth when work
      of different priorities competes (default 60).
    - `CRM_ROUTING_MISS_COOLDOWN_S`: seconds an agent who missed or rejected an offer is left
      alone before the next one (default 10).
    - `CRM_ROUTING_SNAPSHOT_EVERY`: events between two snapshots of the engine; a restart
      replays at most this many (default 10000).
    """

    priority_wait_s: float = 60.0
    miss_cooldown_s: float = 10.0
    snapshot_every: int = 10_000


def routing_from_env(environ: Mapping[str, str] | None = None) -> RoutingSettings:
    """Routing service settings from the environment (or the given mapping, for tests)."""
    env = os.environ if environ is None else environ
    defaults = RoutingSettings()
    return RoutingSettings(
        priority_wait_s=_number(env, "CRM_ROUTING_PRIORITY_WAIT_S", defaults.priority_wait_s, 0),
        miss_cooldown_s=_number(env, "CRM_ROUTING_MISS_COOLDOWN_S", defaults.miss_cooldown_s, 0),
        snapshot_every=int(_number(env, "CRM_ROUTING_SNAPSHOT_EVERY", defaults.snapshot_every, 1)),
    )
