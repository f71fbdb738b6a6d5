"""`crm keys generate`: a fresh key for encrypting stored events at rest.

The key is what `CIPHER_KEY` (every application of a service) or `<APPLICATION>_CIPHER_KEY`
(one application, e.g. `CUSTOMERS_CIPHER_KEY`) expects: random bytes, base64-encoded, for the
eventsourcing library's AES-GCM cipher. Keep it in a secret store; losing it loses the events
stored under it, and changing it makes the events stored before unreadable.
"""

from __future__ import annotations

import argparse
from typing import Any

from eventsourcing.cipher import AESCipher

KEY_SIZES = (16, 24, 32)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="keys for encrypting stored events (CIPHER_KEY)",
        description="Keys of the event store's encryption at rest (AES-GCM, CIPHER_KEY).",
    )
    commands = parser.add_subparsers(dest="keys_command", required=True)
    generate = commands.add_parser(
        "generate",
        help="print a fresh random key (base64) for CIPHER_KEY",
        description="Prints a fresh random AES key, base64-encoded, for CIPHER_KEY.",
    )
    generate.add_argument(
        "--bytes",
        type=int,
        choices=KEY_SIZES,
        default=32,
        help="key length: 16, 24 or 32 bytes (AES-128/192/256; default 32)",
    )
    generate.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    print(AESCipher.create_key(args.bytes))
    return 0
