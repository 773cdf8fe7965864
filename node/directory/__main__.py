"""``python -m node.directory``: mint test ticket authorities and tickets, and update, delete or
search a directory server's records (see the README's "Directory servers" section)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import NodeConfig
from node.directory.client import DirectoryClient
from node.directory.keys import DEFAULT_KEY_PARTS, KeyExchangeAgreement
from node.directory.server import AUTHORITIES_FILE, load_authorities
from node.keyexchange import KeyExchange
from node.keyfile import load_identity, load_or_create_identity, save_identity
from node.server import DHTNode
from records import Identity
from records.directory import (
    QMAIL_KEYS,
    Condition,
    MailboxNumber,
    Operator,
    Payment,
    Profile,
    QMailServer,
    SearchKey,
    SendingPrice,
    Ticket,
    UpdateKey,
    mint_ticket,
)
from records.errors import DirectoryError, DirectoryRefused, KeyFileError, NetworkError

FIELDS: dict[str, int] = {
    "mailbox": UpdateKey.MAILBOX,
    "name": UpdateKey.DISPLAY_NAME,
    "description": UpdateKey.DESCRIPTION,
    "price": UpdateKey.SENDING_PRICE,
    "avatar-name": UpdateKey.AVATAR_NAME,
    "avatar": UpdateKey.AVATAR,
    **{f"qmail{slot}": key for slot, key in enumerate(QMAIL_KEYS)},
}
OPERATORS = {
    "ne": Operator.NOT_EQUAL,
    "eq": Operator.EQUAL,
    "gt": Operator.GREATER,
    "lt": Operator.LESS,
    "contains": Operator.CONTAINS,
    "not-contains": Operator.NOT_CONTAINS,
}
_NAMES = {key: name for name, key in FIELDS.items()}


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _qmail(text: str) -> tuple[int, QMailServer]:
    try:
        slot, coin, host, port = text.split(":")
        return int(slot), QMailServer(int(coin), host, int(port))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SLOT:COIN:IPv4:PORT") from None


def _price(text: str) -> SendingPrice:
    try:
        coin, denomination = text.split(":")
        return SendingPrice(int(coin, 0), int(denomination, 0))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not COIN:DENOMINATION") from None


def _payment(text: str) -> Payment:
    try:
        coin, locker = text.split(":")
        return Payment(int(coin, 0), bytes.fromhex(locker))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not COIN:LOCKER-HEX") from None


class _Clause(argparse.Action):
    """Collects --where / --and / --or in the order given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list)
        field, op, operand = values
        if field not in FIELDS or op not in OPERATORS:
            parser.error(
                f"{option_string}: field one of {sorted(FIELDS)}, op one of {list(OPERATORS)}"
            )
        join = {"--where": SearchKey.WHERE, "--and": SearchKey.AND, "--or": SearchKey.OR}
        key = FIELDS[field]
        try:
            value = _operand(key, operand)
            condition = Condition(join[option_string or "--where"], key, OPERATORS[op], value)
            condition.to_bytes()  # the layout's limits, checked here rather than mid-request
        except (ValueError, DirectoryError) as exc:
            parser.error(f"{option_string} {field} {op} {operand!r}: {exc}")
        clauses = list(getattr(namespace, self.dest) or [])
        clauses.append(condition)
        setattr(namespace, self.dest, clauses)


def _operand(key: int, text: str) -> int | str:
    """A where clause's operand as typed: text for text fields, a mailbox as 14 hex digits, a
    price as COIN:DENOMINATION, a QMail server as COIN:IPv4:PORT, or any number (``0x..``)."""
    if key in (UpdateKey.DISPLAY_NAME, UpdateKey.DESCRIPTION, UpdateKey.AVATAR_NAME):
        return text
    if key == UpdateKey.MAILBOX and len(text) == 14 and not text.lower().startswith("0x"):
        return int(MailboxNumber.from_hex(text))
    if key == UpdateKey.SENDING_PRICE and ":" in text:
        return int.from_bytes(_price(text).to_bytes(), "big")
    if key in QMAIL_KEYS and ":" in text:
        coin, host, port = text.split(":")
        return int.from_bytes(QMailServer(int(coin), host, int(port)).to_bytes(), "big")
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError("not a number (decimal, or 0x.. hex)") from None


def _columns(text: str) -> list[int]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [name for name in names if name not in FIELDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown column(s) {', '.join(unknown) or '(none given)'}; one of {', '.join(FIELDS)}"
        )
    return [FIELDS[name] for name in names]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m node.directory``."""
    parser = argparse.ArgumentParser(
        prog="python -m node.directory",
        description="Use DRD directory servers (seed 000): mint test tickets, update, delete "
        "and search mailbox records.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    mint = sub.add_parser(
        "mint-authorities",
        help="make test ticket authorities (stand-ins for RAIDA)",
        description="Write N authority key files and authorities.json (their public keys and "
        "the threshold K) into DIR; give authorities.json to servers with "
        "--directory-authorities.",
    )
    mint.add_argument("--out", type=Path, required=True, metavar="DIR")
    mint.add_argument("--count", type=int, default=25, help="authorities (default 25)")
    mint.add_argument("--threshold", type=int, default=13, help="signatures needed (13)")

    tick = sub.add_parser(
        "mint-ticket",
        help="sign a ticket for a mailbox and an owner key",
        description="Sign a ticket saying OWNER-KEY holds MAILBOX, with the first K "
        "authorities in DIR; the owner key file is created if missing.",
    )
    tick.add_argument("--authorities", type=Path, required=True, metavar="DIR")
    tick.add_argument("--mailbox", required=True, help="14 hex digits")
    tick.add_argument("--owner-key", type=Path, required=True, metavar="FILE")
    tick.add_argument("--signers", type=int, help="how many authorities sign (threshold)")
    tick.add_argument("--hours", type=float, default=24.0, help="validity (default 24)")
    tick.add_argument("--out", type=Path, required=True, metavar="FILE")

    def server_args(p: argparse.ArgumentParser, owner: bool) -> None:
        p.add_argument("--server", type=_address, required=True, metavar="HOST:PORT")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        if owner:
            p.add_argument("--owner-key", type=Path, required=True, metavar="FILE")
            p.add_argument("--ticket", type=Path, required=True, metavar="FILE")
        p.add_argument("--payment", type=_payment, metavar="COIN:LOCKER-HEX")
        p.add_argument(
            "--bootstrap",
            type=_address,
            action="append",
            default=[],
            metavar="HOST:PORT",
            help="a DHT node to join through, to find key servers for the session key (default: "
            "the server's own node, at the --server address)",
        )
        p.add_argument(
            "--host",
            default="0.0.0.0",
            help="address the command's own node binds (any free UDP port; default 0.0.0.0)",
        )
        p.add_argument(
            "--key-parts",
            type=int,
            default=DEFAULT_KEY_PARTS,
            help=f"key servers the session key is split over, at least ({DEFAULT_KEY_PARTS})",
        )
        p.add_argument(
            "--clear-text",
            action="store_true",
            help="talk to a server run with --directory-clear-text, in clear (tests only)",
        )

    update = sub.add_parser(
        "update",
        help="insert or replace your mailbox's record",
        description="Open a session with your ticket and replace the mailbox's whole record "
        "with the fields given (no field may be empty).",
    )
    server_args(update, True)
    update.add_argument("--name", help="display name (seed key 3, max 255 bytes)")
    update.add_argument("--description", help="self description (key 4, max 255 bytes)")
    update.add_argument("--price", type=_price, metavar="COIN:DENOM", help="key 5")
    update.add_argument("--avatar", type=Path, metavar="FILE", help="keys 6 and 7, max 25500 B")
    update.add_argument(
        "--qmail", type=_qmail, action="append", default=[], metavar="SLOT:COIN:IP:PORT"
    )
    update.add_argument("--comment", help="private: why you updated (kept on the server only)")

    delete = sub.add_parser(
        "delete", help="delete your mailbox's record", description="Delete the whole record."
    )
    server_args(delete, True)

    search = sub.add_parser(
        "search",
        help="search the directory",
        description="Search; clauses combine left to right. A mailbox is 14 hex digits, a "
        "price COIN:DENOM, a QMail server COIN:IPv4:PORT. Fields: "
        + ", ".join(FIELDS)
        + ". Operators: "
        + ", ".join(OPERATORS)
        + ". Prints one JSON object per row.",
    )
    server_args(search, False)
    search.add_argument(
        "--columns",
        type=_columns,
        default="mailbox,name,description",
        help="comma-separated fields to return",
    )
    for flag in ("--where", "--and", "--or"):
        search.add_argument(
            flag, nargs=3, action=_Clause, dest="clauses", metavar=("FIELD", "OP", "VALUE")
        )
    search.add_argument("--limit-kb", type=int, default=64, help="page size in KB (1-255)")
    search.add_argument("--page", type=int, default=0)
    return parser


def _mint_authorities(args: argparse.Namespace) -> int:
    if not 1 <= args.threshold <= args.count:
        raise ValueError("need 1 <= threshold <= count")
    args.out.mkdir(parents=True, exist_ok=True)
    keys = []
    for index in range(args.count):
        identity = Identity.generate()
        save_identity(identity, args.out / f"authority-{index:02}.key")
        keys.append(identity.public_key.hex())
    data = {"threshold": args.threshold, "authorities": keys}
    (args.out / AUTHORITIES_FILE).write_text(json.dumps(data, indent=1), encoding="utf-8")
    print(f"{args.count} authorities, {args.threshold} must sign: {args.out / AUTHORITIES_FILE}")
    return 0


def _mint_ticket(args: argparse.Namespace) -> int:
    mailbox = MailboxNumber.from_hex(args.mailbox)  # before any file is written
    _, threshold = load_authorities(args.authorities / AUTHORITIES_FILE)
    count = args.signers or threshold
    files = sorted(args.authorities.glob("authority-*.key"))[:count]
    authorities = [load_identity(path) for path in files]
    owner = load_or_create_identity(args.owner_key)
    now = time.time_ns() // 1_000_000
    ticket = mint_ticket(
        authorities,
        mailbox,
        owner.public_key,
        issued=now,
        expires=now + int(args.hours * 3_600_000),
    )
    args.out.write_bytes(ticket.to_bytes())
    print(f"ticket for {args.mailbox.lower()} signed by {len(authorities)}: {args.out}")
    return 0


def _row_json(columns: Sequence[int], row: Sequence[bytes | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in zip(columns, row, strict=True):
        name = _NAMES.get(key, str(key))
        if value is None:
            continue
        if key in (UpdateKey.DISPLAY_NAME, UpdateKey.DESCRIPTION, UpdateKey.AVATAR_NAME):
            out[name] = value.decode("utf-8", "replace")
        elif key == UpdateKey.MAILBOX:
            out[name] = value.hex()
        elif key == UpdateKey.AVATAR:
            out[name] = {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
        elif key == UpdateKey.SENDING_PRICE:
            price = SendingPrice.from_bytes(value)
            out[name] = {"coin": price.coin_id, "denomination": price.denomination}
        else:
            server = QMailServer.from_bytes(value)
            out[name] = f"{server.coin_id}:{server.host}:{server.port}"
    return out


@dataclass(frozen=True)
class _Change:
    """What an update or delete needs, read from its files before any network work."""

    owner: Identity
    ticket: Ticket
    profile: Profile | None


def _change(args: argparse.Namespace) -> _Change | None:
    if args.command == "search":
        return None
    owner = load_identity(args.owner_key)
    ticket = Ticket.from_bytes(args.ticket.read_bytes())
    if args.command == "delete":
        return _Change(owner, ticket, None)
    avatar = args.avatar.read_bytes() if args.avatar is not None else None
    profile = Profile(
        display_name=args.name,
        description=args.description,
        sending_price=args.price,
        avatar_name=args.avatar.name if args.avatar is not None else None,
        avatar=avatar,
        qmail=tuple(sorted(args.qmail)),
    )
    return _Change(owner, ticket, profile)


async def _remote(args: argparse.Namespace) -> int:
    """Run the request in clear (`--clear-text`), else through a node of our own that joins
    the DHT, to send the server its session key by the key exchange (seed 000 steps 1-2)."""
    change = _change(args)
    if args.clear_text:
        client = DirectoryClient(timeout=args.timeout, clear_text=True)
        return await _request(args, client, change)
    bootstrap = tuple(args.bootstrap) or (args.server,)
    node = DHTNode(
        NodeConfig(host=args.host, port=0, bootstrap=bootstrap, drd_authorities=None),
        services=[KeyExchange()],
    )
    await node.start()
    try:
        keys = KeyExchangeAgreement(node, min_parts=args.key_parts)
        client = DirectoryClient(timeout=args.timeout, keys=keys)
        return await _request(args, client, change)
    finally:
        await node.stop()


async def _request(
    args: argparse.Namespace, client: DirectoryClient, change: _Change | None
) -> int:
    if change is None:
        columns = args.columns
        results = await client.search(
            args.server,
            columns,
            args.clauses or [],
            limit_kb=args.limit_kb,
            page=args.page,
            payment=args.payment,
        )
        for row in results.rows:
            print(json.dumps(_row_json(results.columns, row)))
        return 0 if results.rows else 3
    session = await client.open_session(args.server, change.owner, change.ticket)
    if change.profile is None:
        await client.delete(session, payment=args.payment)
        print(f"deleted {change.ticket.mailbox}")
        return 0
    await client.update(session, change.profile, comment=args.comment, payment=args.payment)
    print(f"updated {change.ticket.mailbox}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "mint-authorities":
            return _mint_authorities(args)
        if args.command == "mint-ticket":
            return _mint_ticket(args)
        return asyncio.run(_remote(args))
    except DirectoryRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except (DirectoryError, NetworkError, KeyFileError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
