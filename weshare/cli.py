"""``python -m weshare``: the command line over `Weshare`.

Bad input (unknown domain, malformed key, invite or configuration) exits with status 2 and one
line ``error: ...`` on stderr; an exchange that fails, or a local path (the state, the folder),
exits with 1. Files a sync could not read or write are listed on stderr, the others synced, and
the exit status is 0; `sync` without a domain syncs each, and one that fails stops no other (its
error on stderr, exit 1). Long syncs draw a progress bar on stderr when it is a terminal. One
command at a time writes a state (another exits 1, naming the pid that holds it); `status`,
`log` and `forks` only read, and run while a sync does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import platformdirs
from tqdm import tqdm

from weshare.api import Weshare
from weshare.errors import ExchangeError, InvalidFile, UsageError, WeshareError
from weshare.exchange import describe
from weshare.formats import FLAG_ADMIN
from weshare.ids import id_time_ms
from weshare.sync import SyncReport

_INVITE_PREFIX = "weshare-invite-v1:"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\n")


class TqdmProgress:
    """A tqdm bar on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None

    def begin(self, total: int, what: str, unit: str) -> None:
        """Open a bar."""
        self._bar = tqdm(
            total=total, desc=what, unit=unit, unit_scale=unit == "B", file=sys.stderr,
            disable=not sys.stderr.isatty(), leave=False,
        )  # fmt: skip

    def advance(self, amount: int) -> None:
        """Move the bar."""
        if self._bar is not None:
            self._bar.update(amount)

    def end(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m weshare",
        description="Signed, encrypted, add-only file sharing over passive exchanges (seed 004).",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=Path(os.environ.get("WESHARE_STATE") or platformdirs.user_data_dir("weshare")),
        help="state directory: identity and SQLite database (default: $WESHARE_STATE or the "
        "user data directory)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    init = commands.add_parser("init", help="create the identity; with DOMAIN, a new domain")
    init.add_argument("domain", nargs="?", help="a new domain to found, e.g. team.example.org")
    init.add_argument(
        "--folder", type=Path, help="local folder the domain shares (default: STATE/files/DOMAIN)"
    )
    init.add_argument("--name", default="admin", help="your name in the domain")

    commands.add_parser("public", help="print your public key (give it to an admin)")

    exchange = commands.add_parser("add-exchange", help="share a domain through an exchange")
    exchange.add_argument("domain")
    exchange.add_argument(
        "config",
        help='JSON, e.g. \'{"kind": "folder", "path": "exchange"}\'; "-" reads it from stdin '
        'and "@FILE" from a file, so credentials stay out of the shell history and process list',
    )

    invite = commands.add_parser("invite", help="add a user and print their invite")
    invite.add_argument("domain")
    invite.add_argument("public", help="the new user's public key (python -m weshare public)")
    invite.add_argument("--name", required=True, help="the new user's name")
    invite.add_argument("--name2", default="", help="a second name, to tell equal names apart")
    invite.add_argument("--out", type=Path, help="write the invite to this file (default stdout)")

    remove = commands.add_parser(
        "remove", help="remove a user: a new U.x and a new domain key for the others (admins)"
    )
    remove.add_argument("domain")
    remove.add_argument("public", help="the user's public key")

    rekey = commands.add_parser("rekey", help="a new domain key for the same users (admins)")
    rekey.add_argument("domain")
    rekey.add_argument(
        "--all",
        action="store_true",
        help="also write every change again under the new key (the old change files go after "
        "the grace period; parts of large files keep their key)",
    )
    rekey.add_argument("--grace-hours", type=float, default=24.0, help="with --all (default 24)")

    truncate = commands.add_parser(
        "truncate", help="merge the changes so far into a base; old change files go later"
    )
    truncate.add_argument("domain")
    truncate.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        help="how long the old change files stay for clients still reading them (default 24)",
    )

    join = commands.add_parser("join", help="join a domain with an invite, then sync")
    join.add_argument("invite", type=Path, help="file holding the invite ('-' for stdin)")
    join.add_argument("--folder", type=Path, required=True, help="local folder to share into")
    join.add_argument("--name", default="", help="your name")

    sync = commands.add_parser("sync", help="push local changes, pull and apply remote ones")
    sync.add_argument("domain", nargs="?", help="the domain (default: every domain)")

    status = commands.add_parser("status", help="members, files, pending changes, forks")
    status.add_argument("domain", nargs="?", help="the domain (default: every domain)")

    log = commands.add_parser("log", help="every version seen, oldest first")
    log.add_argument("domain")

    forks = commands.add_parser("forks", help="files two users changed at once")
    forks.add_argument("domain")

    choose = commands.add_parser("choose", help="end a fork by keeping one version")
    choose.add_argument("domain")
    choose.add_argument("ref", help="the version to keep, as `forks` lists it (C.<id>/<n>)")
    choose.add_argument("--message", default="", help="a note for the other users")
    return parser


def _when(change_id: int) -> str:
    return datetime.fromtimestamp(id_time_ms(change_id) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _who(client: Weshare, domain: str, writer: bytes) -> str:
    _, name, name2 = client.state.members(domain).get(writer, (0, "", ""))
    label = " ".join(part for part in (name, name2) if part) or "?"
    return f"{label} ({writer.hex()[:7]})"


def _print_report(domain: str, report: SyncReport) -> None:
    found = report.discovered
    print(
        f"{domain}: pushed {report.pushed} (new {found.created}, changed {found.updated}, "
        f"renamed {found.renamed}, deleted {found.deleted}), pulled {report.pulled}, "
        f"wrote {report.written}, removed {report.removed}, forks {report.forks}, "
        f"uploaded {report.uploaded} B, downloaded {report.downloaded} B"
        + (f", deleted {report.deleted} old change files" if report.deleted else "")
    )
    for path, name in report.moved.items():
        print(f"  {path}: written as {name}, as other files need {path} as a folder")
    for problem in report.problems:
        print(f"  problem: {problem}", file=sys.stderr)


def _read_invite(path: Path) -> bytes:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    text = text.strip()
    if not text.startswith(_INVITE_PREFIX):
        raise UsageError("not a weshare invite")
    try:
        return base64.urlsafe_b64decode(text[len(_INVITE_PREFIX) :])
    except (binascii.Error, ValueError) as exc:
        raise UsageError("invite is not valid base64") from exc


_READERS = frozenset({"status", "log", "forks"})  # they only read: they run while a sync does


async def _run(args: argparse.Namespace) -> int:
    reader = args.command in _READERS
    async with Weshare(args.state, progress=TqdmProgress(), read_only=reader) as client:
        return await _COMMANDS[args.command](client, args)


async def _init(client: Weshare, args: argparse.Namespace) -> int:
    if args.domain is not None:
        await client.add_domain(args.domain, args.folder, args.name)
        print(f"domain {args.domain} created; add an exchange next")
    print(client.get_public())
    return 0


async def _public(client: Weshare, args: argparse.Namespace) -> int:
    print(client.get_public())
    return 0


async def _add_exchange(client: Weshare, args: argparse.Namespace) -> int:
    text = args.config
    try:
        if text == "-":
            text = sys.stdin.read()
        elif text.startswith("@"):
            text = await asyncio.to_thread(Path(text[1:]).read_text)
    except OSError as exc:
        raise UsageError(f"cannot read the configuration: {exc.strerror}") from exc
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"exchange configuration is not JSON: {exc.msg}") from exc
    if not isinstance(config, dict):
        raise UsageError("exchange configuration must be a JSON object")
    await client.add_exchange(args.domain, config)
    print(f"{args.domain}: exchange added")
    return 0


async def _invite(client: Weshare, args: argparse.Namespace) -> int:
    sealed = await client.invite(args.domain, args.public, args.name, args.name2)
    text = _INVITE_PREFIX + base64.urlsafe_b64encode(sealed).decode() + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


async def _remove(client: Weshare, args: argparse.Namespace) -> int:
    await client.remove_user(args.domain, args.public)
    print(f"{args.domain}: user {args.public[:7]} removed; new changes use a new key")
    return 0


def _grace_ms(hours: float) -> int:
    if hours < 0:
        raise UsageError("the grace period cannot be negative")
    return int(hours * 3600 * 1000)


async def _rekey(client: Weshare, args: argparse.Namespace) -> int:
    await client.rekey(args.domain, everything=args.all, grace_ms=_grace_ms(args.grace_hours))
    what = "every change is written again with it" if args.all else "new changes use it"
    print(f"{args.domain}: a new key; {what}")
    return 0


async def _truncate(client: Weshare, args: argparse.Namespace) -> int:
    action = await client.truncate(args.domain, _grace_ms(args.grace_hours))
    print(
        f"{args.domain}: {len(action.fossils)} change files merged into {len(action.bases)}; "
        f"they are deleted after {args.grace_hours:g} h"
    )
    return 0


async def _join(client: Weshare, args: argparse.Namespace) -> int:
    try:
        invite = _read_invite(args.invite)
    except OSError as exc:
        raise UsageError(f"cannot read invite: {exc.strerror}") from exc
    domain = await client.join(invite, args.folder, args.name)
    _print_report(domain, await client.sync(domain))
    return 0


def _domains(client: Weshare, domain: str | None) -> list[str]:
    if domain is not None:
        return [domain]
    return client.domains()


async def _sync(client: Weshare, args: argparse.Namespace) -> int:
    if args.domain is not None:
        _print_report(args.domain, await client.sync(args.domain))
        return 0
    failed = 0
    for domain in client.domains():  # one that fails (its folder gone, say) stops no other
        try:
            _print_report(domain, await client.sync(domain))
        except (WeshareError, OSError) as exc:
            print(f"error: {domain}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


async def _status(client: Weshare, args: argparse.Namespace) -> int:
    print(f"public key: {client.get_public()}")
    for domain in _domains(client, args.domain):
        status = client.status(domain)
        print(f"{domain}: folder {status.folder}")
        print(f"  files {status.files}, waiting to push {status.pending}, forks {status.forks}")
        for key, (flags, _, _) in sorted(status.members.items()):
            role = "admin" if flags & FLAG_ADMIN else "follower"
            seen = status.writers.get(key)
            last = f", last change {_when(seen)}" if seen else ""
            print(f"  user {_who(client, domain, key)}: {role}{last}")
        for config in status.exchanges:
            print(f"  exchange {describe(config)}")
        for name, reason in status.refused:
            print(f"  refused {name}: {reason}")
    return 0


async def _log(client: Weshare, args: argparse.Namespace) -> int:
    for row in client.log(args.domain):
        version = row.version
        what = version.path if version.path is not None else "(deleted)"
        message = f"  {row.message}" if row.message else ""
        who = _who(client, args.domain, version.writer)
        print(f"{version.ref}  {_when(version.change_id)}  {who}  {what}{message}")
    return 0


async def _forks(client: Weshare, args: argparse.Namespace) -> int:
    resolution = client.resolution(args.domain)
    places = resolution.places()
    if not resolution.forks:
        print("no forks")
    for path, name in resolution.moved.items():
        print(f"{path}: at {name}, as other files need {path} as a folder (not a fork)")
    for fork in resolution.forks:
        print(f"{fork.path}:")
        for head in fork.heads:
            where = "deleted" if head.path is None else f"at {places.get(head.ref, head.path)}"
            who = _who(client, args.domain, head.writer)
            print(f"  {head.ref}  {_when(head.change_id)}  {who}  {where}")
    return 0


async def _choose(client: Weshare, args: argparse.Namespace) -> int:
    _print_report(args.domain, await client.choose(args.domain, args.ref, args.message))
    return 0


_COMMANDS = {
    "init": _init,
    "public": _public,
    "add-exchange": _add_exchange,
    "invite": _invite,
    "remove": _remove,
    "rekey": _rekey,
    "truncate": _truncate,
    "join": _join,
    "sync": _sync,
    "status": _status,
    "log": _log,
    "forks": _forks,
    "choose": _choose,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the process exit status."""
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (UsageError, InvalidFile) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExchangeError as exc:
        print(f"error: exchange: {exc}", file=sys.stderr)
        return 1
    except WeshareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the state or the folder: a path, permissions, a full disk
        print(f"error: {exc}", file=sys.stderr)
        return 1
