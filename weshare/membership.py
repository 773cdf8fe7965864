"""Who belongs to a domain: the `admins` anchor, the chain of `U.x` files, invites.

`admins` is written once, when a domain is created on an exchange, and signed by a founding
admin; a member trusts it only if that signer is one it trusts already (its own key, or the
admins its invite named: seed 004, the invite carries "the administrators of the group").
Each `U.x` names the `U.x` it replaces (`previous`) and must be signed by an admin of that one
(the first: by a founding admin). A reader accepts them in id order, so a
file copied under a newer name (its signature binds the name), one that does not follow the
current one, or one signed by a follower is refused and the users stay as they were.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence, Set
from typing import Any

from records.identity import Identity
from weshare.crypto import decrypt, encrypt, new_key, open_sealed, open_signed, seal_to, sign_file
from weshare.errors import InvalidFile, ObjectNotFound, UsageError
from weshare.exchange import Exchange
from weshare.formats import (
    FLAG_ADMIN,
    AdminsFile,
    ExchangesFile,
    Invite,
    Keyring,
    UserEntry,
    UsersFile,
)
from weshare.ids import object_name, parse_object_name
from weshare.state import State

_INVITE_NAME = "invite"  # the name an invite's signature binds


def _members(users: UsersFile) -> dict[bytes, tuple[int, str, str]]:
    return {u.public: (u.flags, u.name, u.name2) for u in users.users}


async def create_domain_on(
    exchange: Exchange,
    domain: str,
    founder: Identity,
    name: str,
    keyring: Keyring,
    first_users_id: int,
    configs: Sequence[Mapping[str, Any]],
) -> None:
    """Lay out a new domain's folder: `admins` first (the anchor), then the first `U.x` with the
    founder as admin, then the encrypted `exchanges`. Rerunnable: what exists is left alone."""
    admins_name = f"{domain}/admins"
    body = sign_file(founder, admins_name, AdminsFile(domain, (founder.public_key,)).encode())
    if not await exchange.put_if_absent(admins_name, body):
        _, signer = open_signed(admins_name, await exchange.get(admins_name))
        if signer != founder.public_key:
            raise UsageError(f"domain {domain} already exists on this exchange (another admin)")
    if not await exchange.list(f"{domain}/U."):
        user = UserEntry(
            founder.public_key, FLAG_ADMIN, seal_to(founder.public_key, keyring.encode()), name
        )
        users_name = f"{domain}/{object_name('U', first_users_id)}"
        await exchange.put_if_absent(
            users_name, sign_file(founder, users_name, UsersFile(0, (user,)).encode())
        )
    key_id, key = keyring.current
    exchanges_name = f"{domain}/exchanges"
    plaintext = ExchangesFile(tuple(configs)).encode()
    await exchange.put_if_absent(
        exchanges_name,
        sign_file(founder, exchanges_name, encrypt(key_id, key, exchanges_name, plaintext)),
    )


async def read_anchor(exchange: Exchange, domain: str, trusted: Set[bytes]) -> AdminsFile:
    """The domain's `admins`, checked to be signed by one of the `trusted` founding admins (our
    own key, or those our invite named) and to name the domain."""
    name = f"{domain}/admins"
    try:
        content, signer = open_signed(name, await exchange.get(name))
    except ObjectNotFound as exc:
        raise UsageError(f"domain {domain} does not exist on the exchange yet") from exc
    admins = AdminsFile.decode(content)
    if signer not in trusted or signer not in admins.admins or admins.domain != domain:
        raise InvalidFile("admins: not signed by the admin we trust")  # the anchor of trust
    return admins


def check_users_file(
    name: str,
    data: bytes,
    current_id: int,
    admins: set[bytes],
) -> UsersFile:
    """A `U.x` that may follow the current one: signed for this name by an admin of the current
    users (`admins`), naming the current one as `previous`. `InvalidFile` otherwise."""
    content, signer = open_signed(name, data)
    users = UsersFile.decode(content)
    if users.previous != current_id:
        raise InvalidFile(f"{name}: does not follow the current U.x")  # replayed or stale
    if signer not in admins:
        raise InvalidFile(f"{name}: not signed by an admin")  # seed 004: admins add/remove users
    return users


async def refresh_members(
    exchange: Exchange, state: State, domain: str, identity: Identity, anchor: AdminsFile
) -> Keyring | None:
    """Read the `U.x` files newer than the current one, accept those that follow the chain, and
    return our keyring from the newest accepted (None if no accepted `U.x` lists us)."""
    current = state.get_config(domain, "users") or ""
    current_id = parse_object_name("U", current) or 0
    members = state.members(domain)
    if current:  # a state kept by a version without Epochs: its current users start them
        with state.transaction():
            state.add_epoch(domain, current_id, members)
    admins = {key for key, (flags, _, _) in members.items() if flags & FLAG_ADMIN} or set(
        anchor.admins
    )
    after = f"{domain}/{current}" if current else ""
    for full in await exchange.list(f"{domain}/U.", after=after):
        name = full.rpartition("/")[2]
        users_id = parse_object_name("U", name)
        if users_id is None or name in state.seen(domain, [name]):
            continue
        try:
            users = check_users_file(full, await exchange.get(full), current_id, admins)
        except InvalidFile as exc:
            with state.transaction():
                state.mark_object(domain, name, exc.reason)
            continue
        ring = None
        for user in users.users:
            if user.public == identity.public_key:
                ring = Keyring.decode(await asyncio.to_thread(open_sealed, identity, user.aes))
        with state.transaction():
            state.set_members(domain, _members(users))
            state.add_epoch(domain, users_id, [user.public for user in users.users])
            # changes read before this U.x was seen, made after it by someone it does not
            # list, are dropped: every reader ends up ignoring them, whenever it read them
            state.revoke_after(domain, users_id, {user.public for user in users.users})
            state.mark_object(domain, name, None)
            state.set_config(domain, "users", name)
            if ring is not None:
                old = _stored_keyring(state, domain)
                merged = Keyring({**(old.keys if old else {}), **ring.keys})
                state.set_config(domain, "keyring", merged.encode().hex())
        current, current_id = name, users_id
        admins = {u.public for u in users.users if u.is_admin}
    return _stored_keyring(state, domain)


def _stored_keyring(state: State, domain: str) -> Keyring | None:
    value = state.get_config(domain, "keyring")
    return None if value is None else Keyring.decode(bytes.fromhex(value))


def require_admin(
    state: State, domain: str, admin: Identity, doing: str = "add or remove users"
) -> dict[bytes, tuple[int, str, str]]:
    """The members of `domain`; `UsageError` unless `admin` is one of its admins (seed 004:
    only admins add and remove users). `doing` names the refused operation."""
    members = state.members(domain)
    if admin.public_key not in members or not members[admin.public_key][0] & FLAG_ADMIN:
        raise UsageError(f"only an admin of the domain can {doing}")
    return members


USERS_RACE = "another U.x was written at the same moment; try again"


async def _put_users(
    exchange: Exchange,
    state: State,
    domain: str,
    admin: Identity,
    keyring: Keyring,
    new_id: int,
    members: Mapping[bytes, tuple[int, str, str]],
) -> str:
    """Write the `U.x` `new_id` listing `members`, each with `keyring` sealed to them; returns
    its name. The caller has refreshed the members just before, so it follows the current
    `U.x` unless another was written since (see `Weshare._users_written`)."""
    previous = parse_object_name("U", state.get_config(domain, "users") or "") or 0
    entries = tuple(
        UserEntry(key, flags, seal_to(key, keyring.encode()), first, second)
        for key, (flags, first, second) in members.items()
    )
    users_name = f"{domain}/{object_name('U', new_id)}"
    body = sign_file(admin, users_name, UsersFile(previous, entries).encode())
    if not await exchange.put_if_absent(users_name, body):
        raise UsageError(USERS_RACE)
    return users_name.rpartition("/")[2]


async def add_user(
    exchange: Exchange,
    state: State,
    domain: str,
    admin: Identity,
    keyring: Keyring,
    new_id: int,
    public: bytes,
    name: str,
    name2: str,
) -> str:
    """Write a `U.x` that adds `public` (as a follower) to the current users; its name."""
    members = dict(require_admin(state, domain, admin))
    members.pop(public, None)
    members[public] = (0, name, name2)
    return await _put_users(exchange, state, domain, admin, keyring, new_id, members)


async def remove_user(
    exchange: Exchange,
    state: State,
    domain: str,
    admin: Identity,
    keyring: Keyring,
    new_id: int,
    public: bytes,
) -> str:
    """Write a `U.x` without `public` whose keyring gains a new domain key (id `new_id`), sealed
    to the remaining users only: changes made from then on use it, so the removed user reads
    none of them (Keybase teams do the same; old content keeps its old key). Its name."""
    members = dict(require_admin(state, domain, admin))
    if public not in members:
        raise UsageError("not a user of the domain")
    if public == admin.public_key:
        raise UsageError("an admin cannot remove themself")
    del members[public]
    rekeyed = Keyring({**keyring.keys, new_id: new_key()})
    return await _put_users(exchange, state, domain, admin, rekeyed, new_id, members)


async def rekey(
    exchange: Exchange,
    state: State,
    domain: str,
    admin: Identity,
    keyring: Keyring,
    new_id: int,
) -> str:
    """Write a `U.x` with the same users and a new domain key (id `new_id`); its name."""
    members = require_admin(state, domain, admin, "change the domain key")
    rekeyed = Keyring({**keyring.keys, new_id: new_key()})
    return await _put_users(exchange, state, domain, admin, rekeyed, new_id, members)


def make_invite(admin: Identity, receiver: bytes, config: Mapping[str, Any]) -> bytes:
    """seed 004 Invite, signed by the admin and sealed to the receiver's key."""
    content = Invite(admin.public_key, config).encode()
    return seal_to(receiver, sign_file(admin, _INVITE_NAME, content))


def open_invite(identity: Identity, sealed: bytes) -> Invite:
    """The invite sealed to `identity`; `InvalidFile` if it is not for us, tampered, or not signed
    by the admin it names."""
    content, signer = open_signed(_INVITE_NAME, open_sealed(identity, sealed))
    invite = Invite.decode(content)
    if signer != invite.admin:
        raise InvalidFile("invite: not signed by the admin it names")
    return invite


def read_exchanges(keyring: Keyring, domain: str, data: bytes) -> ExchangesFile:
    """The `exchanges` file's configurations (checked and decrypted)."""
    name = f"{domain}/exchanges"
    content, _ = open_signed(name, data)
    return ExchangesFile.decode(decrypt(keyring.keys, name, content))
