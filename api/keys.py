"""Manage API keys: ``python -m api.keys {add --tenant T | list | revoke KEY_ID} [--file F]``.

``add`` prints the new key once; only its sha256 is stored. The file defaults to
``INSPECTQ_API_KEYS_FILE`` (``Settings.api_keys_file``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from api.apikeys import add_key, read_keys, revoke_key
from inspectq.config import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.keys", description=__doc__)
    parser.add_argument("--file", help="keys file (default: INSPECTQ_API_KEYS_FILE)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a key for a tenant and print it once")
    add.add_argument("--tenant", required=True)
    commands.add_parser("list", help="list key ids and tenants (never the keys)")
    revoke = commands.add_parser("revoke", help="remove a key by its id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    file = args.file or Settings().api_keys_file
    if not file:
        parser.error("no keys file: pass --file or set INSPECTQ_API_KEYS_FILE")
    path = Path(file)

    if args.command == "add":
        try:
            plain, entry = add_key(path, args.tenant)
        except ValueError as error:
            parser.error(str(error))
        print(f"{entry.id}\t{entry.tenant}\t{plain}")
        print("Store this key now: it is not shown again.", file=sys.stderr)
    elif args.command == "list":
        for key in read_keys(path):
            print(f"{key.id}\t{key.tenant}\t{key.created_at}")
    elif args.command == "revoke":
        if not revoke_key(path, args.key_id):
            print(f"no key with id {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
