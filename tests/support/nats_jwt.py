"""NATS decentralised auth for tests: an operator, an account and users, signed here.

What `nsc` would make for an operator-mode nats-server, made at test time with `nkeys`:

- `Operator.create("name")`, `operator.account("name")` (JetStream on, no limits) and
  `account.user("name")`: nkey pairs with their signed JWTs.
- `operator_config(operator, *accounts)`: the nats-server configuration trusting the operator,
  with the accounts' JWTs preloaded into a memory resolver (no account server needed).
- `user.write_creds(path)`: the user's `.creds` file, in the format `nsc` writes and NATS
  clients (NATS_CREDS_FILE) read.

A NATS JWT is `base64url(header).base64url(claims).base64url(signature)` (no padding), the
signature an ed25519 one by the issuer's nkey over the first two parts; `jti` is the base32 of
the SHA-512/256 hash of the standard claims with `jti` left out, as nats-io/jwt computes it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys  # type: ignore[import-untyped]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = -1


@dataclass(frozen=True)
class Identity:
    """An nkey pair: the seed (secret) and its public key, which names the entity."""

    seed: bytes

    @classmethod
    def create(cls, prefix: int) -> Identity:
        return cls(seed=nkeys.encode_seed(os.urandom(32), prefix))

    @property
    def public_key(self) -> str:
        return str(nkeys.from_seed(bytearray(self.seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_jwt(issuer: Identity, subject: str, name: str, nats: dict[str, object]) -> str:
    """A JWT with the claims `nats` (type, version, limits…) about `subject`, signed by `issuer`."""
    # The standard claims in nats-io/jwt's field order: the hash is of exactly these.
    standard: dict[str, object] = {
        "iat": int(time.time()),
        "iss": issuer.public_key,
        "name": name,
        "sub": subject,
    }
    digest = hashlib.new("sha512_256", _json(standard)).digest()
    jti = base64.b32encode(digest).rstrip(b"=").decode()
    claims = {"jti": jti, **standard, "nats": nats}
    signing_input = f"{_b64url(_json(_HEADER))}.{_b64url(_json(claims))}"
    return f"{signing_input}.{_b64url(issuer.sign(signing_input.encode()))}"


@dataclass(frozen=True)
class User:
    name: str
    identity: Identity
    jwt: str

    def write_creds(self, path: Path) -> Path:
        """The `.creds` file: the user's JWT, then its seed (which signs the server's nonce)."""
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{self.jwt}\n"
            "------END NATS USER JWT------\n"
            "\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n"
            "\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{self.identity.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
            "\n"
            "*************************************************************\n"
        )
        path.chmod(0o600)
        return path


@dataclass(frozen=True)
class Account:
    name: str
    identity: Identity
    jwt: str

    def user(self, name: str) -> User:
        """A user of this account, allowed everything within it."""
        identity = Identity.create(nkeys.PREFIX_BYTE_USER)
        jwt = encode_jwt(
            self.identity,
            identity.public_key,
            name,
            {
                "pub": {},
                "sub": {},
                "subs": _UNLIMITED,
                "data": _UNLIMITED,
                "payload": _UNLIMITED,
                "type": "user",
                "version": 2,
            },
        )
        return User(name=name, identity=identity, jwt=jwt)


@dataclass(frozen=True)
class Operator:
    name: str
    identity: Identity
    jwt: str

    @classmethod
    def create(cls, name: str) -> Operator:
        identity = Identity.create(nkeys.PREFIX_BYTE_OPERATOR)
        jwt = encode_jwt(identity, identity.public_key, name, {"type": "operator", "version": 2})
        return cls(name=name, identity=identity, jwt=jwt)

    def account(self, name: str, *, jetstream: bool = True) -> Account:
        """An account of this operator, nothing limited, with JetStream unless told not to."""
        identity = Identity.create(nkeys.PREFIX_BYTE_ACCOUNT)
        limits: dict[str, object] = {
            key: _UNLIMITED
            for key in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")
        }
        limits["wildcards"] = True
        if jetstream:
            # JetStream is on for an account whose storage limits are not 0.
            limits.update(
                (key, _UNLIMITED) for key in ("mem_storage", "disk_storage", "streams", "consumer")
            )
        jwt = encode_jwt(
            self.identity,
            identity.public_key,
            name,
            {
                "limits": limits,
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account",
                "version": 2,
            },
        )
        return Account(name=name, identity=identity, jwt=jwt)


def operator_config(operator: Operator, *accounts: Account) -> dict[str, object]:
    """nats-server configuration blocks: trust `operator`, know `accounts` from memory.

    A server with JetStream needs a system account in operator mode: one is made here."""
    system = operator.account("SYS", jetstream=False)
    return {
        "operator": operator.jwt,
        "system_account": system.identity.public_key,
        "resolver": "MEMORY",
        "resolver_preload": {
            account.identity.public_key: account.jwt for account in (system, *accounts)
        },
    }
