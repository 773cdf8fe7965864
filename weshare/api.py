"""`Weshare`: the library API (seed 004: start, AddDomain, AddExchange, GetPublic; plus invite,
join, sync, status, log, forks and choose)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from records.identity import Identity
from weshare.credentials import open_local, redact, seal_local
from weshare.crypto import new_key
from weshare.errors import InvalidFile, UsageError
from weshare.exchange import (
    Exchange,
    ExchangeFactory,
    default_kinds,
    normalize_config,
    open_exchange,
)
from weshare.formats import Keyring, Truncation
from weshare.ids import SnowflakeIds, instance_of, parse_object_name
from weshare.lineage import Fork, Resolution, resolve
from weshare.membership import (
    USERS_RACE,
    add_user,
    create_domain_on,
    make_invite,
    open_invite,
    read_anchor,
    refresh_members,
    rekey,
    remove_user,
    require_admin,
)
from weshare.replicas import ExchangeSet, copy_domain
from weshare.state import DATABASE, LogRow, State
from weshare.sync import SyncReport, choose, sync_session
from weshare.transfer import NoProgress, Progress, Session
from weshare.truncate import DEFAULT_GRACE_MS, fossils_below, truncate

_DOMAIN = re.compile(
    r"^(?=.{1,128}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)


def system_clock() -> int:
    """Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class DomainStatus:
    """What `status` shows for one domain."""

    domain: str
    folder: Path
    members: dict[bytes, tuple[int, str, str]]
    files: int
    pending: int  # local changes waiting to be pushed
    forks: int
    refused: list[tuple[str, str]]
    writers: dict[bytes, int]  # highest change id seen per writer
    exchanges: list[dict[str, Any]]  # with credentials redacted


class Weshare:
    """A weshare client whose state (identity, domains, files seen) lives in `state_dir`.

    Use ``async with Weshare(path) as client`` or call `start` and `close`. One operation at a
    time runs per client (a lock); exchanges are opened for each operation and closed after.
    One client at a time opens a state (`StateInUse` otherwise); with `read_only` a client only
    reads it (`status`, `log`, `forks`: while a sync runs, say) and may share it."""

    def __init__(
        self,
        state_dir: Path | str,
        *,
        kinds: Mapping[str, ExchangeFactory] | None = None,
        clock: Callable[[], int] = system_clock,
        progress: Progress | None = None,
        read_only: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.read_only = read_only
        self._kinds = dict(default_kinds() if kinds is None else kinds)
        self._clock = clock
        self._progress = progress or NoProgress()
        self._queued: dict[str, float] = {}  # change files this process queued (Session.queued)
        self._state: State | None = None
        self._identity: Identity | None = None
        self._ids: SnowflakeIds | None = None
        self._lock = asyncio.Lock()
        self._latency: dict[str, list[float | None]] = {}  # per domain, per exchange

    async def start(self) -> str:
        """Open the state (creating it and an identity the first time); the public key, hex."""
        if self.read_only and not (self.state_dir / DATABASE).is_file():
            raise UsageError(f"no weshare state in {self.state_dir}")
        state = State(self.state_dir / DATABASE, exclusive=not self.read_only)
        private = state.get_config(None, "identity.private")  # seed 004 Config keys
        if private is None and self.read_only:
            state.close()
            raise UsageError(f"no identity in {self.state_dir} yet")
        if private is None:
            identity = Identity.generate()
            with state.transaction():
                state.set_config(None, "identity.private", identity.to_bytes().decode())
                state.set_config(None, "identity.public", identity.public_key.hex())
        else:
            identity = Identity.from_bytes(private.encode())
        self._state, self._identity = state, identity
        self._ids = SnowflakeIds(instance_of(identity.public_key))
        return self.get_public()

    async def close(self) -> None:
        """Close the state."""
        if self._state is not None:
            self._state.close()
            self._state = None

    async def __aenter__(self) -> Weshare:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def state(self) -> State:
        """The open state (after `start`)."""
        if self._state is None:
            raise UsageError("Weshare is not started")
        return self._state

    def _writable(self) -> None:
        if self.read_only:
            raise UsageError(f"the state in {self.state_dir} was opened read-only")

    @property
    def identity(self) -> Identity:
        """This client's identity (after `start`)."""
        if self._identity is None:
            raise UsageError("Weshare is not started")
        return self._identity

    def get_public(self) -> str:
        """seed 004 GetPublic: this user's ed25519 public key, hex."""
        return self.identity.public_key.hex()

    def domains(self) -> list[str]:
        """The domains this client belongs to."""
        return self.state.domains()

    def _require(self, domain: str) -> Path:
        folder = self.state.get_config(domain, "folder")
        if folder is None:
            raise UsageError(f"unknown domain {domain!r}")
        return Path(folder)

    def _check_places(
        self, domain: str, folder: Path, configs: Iterable[Mapping[str, Any]]
    ) -> None:
        """Blocking: refuse a layout in which a sync would share what it must not: the state
        (its identity's private key among it) inside the shared `folder`, a folder that
        overlaps another domain's, or a folder exchange inside the folder (each sync would
        share the change files it just wrote, without end) or holding it."""
        state_dir = self.state_dir.resolve()
        if state_dir.is_relative_to(folder):
            raise UsageError(
                f"{folder}: the state ({state_dir}) would be shared from it; keep it outside"
            )
        for other in self.domains():
            path = self._require(other)
            if other != domain and (folder.is_relative_to(path) or path.is_relative_to(folder)):
                raise UsageError(f"{folder}: overlaps {path}, the folder of {other}")
        for config in configs:
            if config.get("kind") == "folder" and isinstance(config.get("path"), str):
                exchange = Path(config["path"]).resolve()
                if exchange.is_relative_to(folder) or folder.is_relative_to(exchange / domain):
                    raise UsageError(
                        f"{folder}: the folder exchange at {exchange} lies in it, or it in the "
                        "exchange (a sync would share the files it just put); keep them apart"
                    )

    def _new_folder(
        self, domain: str, folder: Path | str, configs: Iterable[Mapping[str, Any]]
    ) -> Path:
        """Blocking: `folder` made absolute, checked (`_check_places`) and made."""
        path = Path(folder).resolve()
        self._check_places(domain, path, configs)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _exchanges(self, domain: str) -> list[dict[str, Any]]:
        """The domain's exchange configurations, credentials included (stored sealed)."""
        stored = self.state.get_config(domain, "exchanges")
        configs: list[dict[str, Any]] = [] if stored is None else open_local(self.identity, stored)
        return configs

    def _store_exchanges(self, domain: str, configs: list[dict[str, Any]]) -> None:
        # credentials never in clear on disk (issue 16): sealed under a key of our identity
        self.state.set_config(domain, "exchanges", seal_local(self.identity, configs))

    def _next_id(self, floor: int = 0) -> int:
        assert self._ids is not None
        return self._ids.next(self._clock(), floor)

    async def add_domain(
        self, name: str, folder: Path | str | None = None, user_name: str = "admin"
    ) -> None:
        """seed 004 AddDomain: a new domain whose founding admin is this user, shared from the
        local `folder` (default ``<state_dir>/files/<name>``). It reaches others once an exchange
        is added."""
        self._writable()
        if not _DOMAIN.match(name):
            raise UsageError(f"{name!r} is not a domain name (like public.weshare.zone)")
        if self.state.get_config(name, "folder") is not None:
            raise UsageError(f"domain {name} exists already")
        path = await asyncio.to_thread(
            self._new_folder, name, folder or self.state_dir / "files" / name, []
        )
        first = self._next_id()
        keyring = Keyring({first: new_key()})
        with self.state.transaction():
            self.state.set_config(name, "folder", str(path))
            self.state.set_config(name, "admins", json.dumps([self.get_public()]))
            self.state.set_config(name, "founding", str(first))
            self.state.set_config(name, "name", user_name)
            self.state.set_config(name, "keyring", keyring.encode().hex())

    async def add_exchange(self, domain: str, config: Mapping[str, Any]) -> None:
        """seed 004 AddExchange: share `domain` through the exchange `config` describes
        (``{"kind": "folder", "path": DIR}``, ``"s3"``, ``"azure"``, ``"sftp"``: see
        `weshare.exchange.default_kinds`). The first exchange of a new domain is laid out by
        its founding admin; a further one gets a copy of what the domain's exchanges hold, then
        every write goes to each and reads to the nearest (`weshare.replicas`)."""
        self._writable()
        self._require(domain)
        normalized = normalize_config(config)
        await asyncio.to_thread(self._check_places, domain, self._require(domain), [normalized])
        known = self._exchanges(domain)
        if normalized in known:
            return
        configs = [*known, normalized]
        async with self._lock, self._open(normalized) as exchange:
            founding = self.state.get_config(domain, "founding")
            if known:
                async with self._open_set(domain, known) as existing:
                    await copy_domain(existing, exchange, domain)
            elif founding is not None and self._admins(domain) == {self.identity.public_key}:
                keyring = _keyring(self.state, domain)
                await create_domain_on(
                    exchange, domain, self.identity, self.state.get_config(domain, "name") or "",
                    keyring, int(founding), configs,
                )  # fmt: skip
            await read_anchor(exchange, domain, self._admins(domain))
        self._store_exchanges(domain, configs)

    def _admins(self, domain: str) -> set[bytes]:
        """The founding admins we trust for `domain` (ourselves, or those our invite named)."""
        admins = self.state.get_config(domain, "admins")
        if admins is None:
            raise UsageError(f"unknown domain {domain!r}")
        return {bytes.fromhex(key) for key in json.loads(admins)}

    async def _users_written(self, exchange: Exchange, domain: str, name: str) -> Keyring | None:
        """Read the users again after writing `U.x` `name`, which every reader must accept;
        `UsageError` if it was refused. Another `U.x` that follows the same one as ours (the
        same admin on another device, at the same moment) comes first for every reader, who
        refuses ours: a removal or a new key that went so would be in force nowhere, while
        the admin took it as done."""
        keyring = await self._refresh(exchange, domain)
        if not self.state.accepted(domain, "U.", [name]):
            raise UsageError(USERS_RACE)
        return keyring

    async def _refresh(self, exchange: Exchange, domain: str) -> Keyring | None:
        anchor = await read_anchor(exchange, domain, self._admins(domain))
        return await refresh_members(exchange, self.state, domain, self.identity, anchor)

    @asynccontextmanager
    async def _open(self, config: Mapping[str, Any]) -> AsyncIterator[Exchange]:
        exchange = open_exchange(config, self._kinds)
        try:
            yield exchange
        finally:
            await exchange.close()

    @asynccontextmanager
    async def _open_set(
        self, domain: str, configs: list[dict[str, Any]]
    ) -> AsyncIterator[ExchangeSet]:
        """Every exchange of `domain` as one (`weshare.replicas`); the latencies measured are
        kept for the next operation."""
        opened: list[Exchange] = []
        try:
            for config in configs:
                opened.append(open_exchange(config, self._kinds))
            exchanges = ExchangeSet(opened)
            latency = self._latency.get(domain)
            if latency is not None and len(latency) == len(opened):
                exchanges.latency = list(latency)
            yield exchanges
            self._latency[domain] = list(exchanges.latency)
        finally:
            for exchange in opened:
                await exchange.close()

    @asynccontextmanager
    async def _session(self, domain: str) -> AsyncIterator[Session]:
        self._writable()
        folder = self._require(domain)
        configs = self._exchanges(domain)
        if not configs:
            raise UsageError(f"domain {domain} has no exchange yet (add-exchange)")
        await asyncio.to_thread(self._check_places, domain, folder, configs)  # older states
        async with self._lock, self._open_set(domain, configs) as exchange:
            anchor = await read_anchor(exchange, domain, self._admins(domain))

            def refresh() -> Awaitable[Keyring | None]:
                return refresh_members(exchange, self.state, domain, self.identity, anchor)

            keyring = await refresh()
            if keyring is None or self.identity.public_key not in self.state.members(domain):
                raise UsageError(f"not a user of {domain} yet: no U.x on the exchange lists us")
            assert self._ids is not None
            yield Session(
                domain, folder, self.identity, self.state, exchange, keyring, self._ids,
                self._clock, self._progress, refresh, self._queued,
            )  # fmt: skip

    async def invite(self, domain: str, public: str, name: str, name2: str = "") -> bytes:
        """Add the user with ed25519 key `public` (hex) to `domain` (a new `U.x`) and return
        their invite: the admin's key and the exchanges, sealed to them (seed 004 Invite)."""
        key = _parse_key(public)
        async with self._session(domain) as session:
            written = await add_user(
                session.exchange, self.state, domain, self.identity, session.keyring,
                self._users_id(domain), key, name, name2,
            )  # fmt: skip
            await self._users_written(session.exchange, domain, written)
        admins = sorted(admin.hex() for admin in self._admins(domain))
        # seed 004 Invite: the exchanges and the administrators of the group
        config = {"domain": domain, "exchanges": self._exchanges(domain), "admins": admins}
        return make_invite(self.identity, key, config)

    def _users_id(self, domain: str) -> int:
        """An id for a new `U.x`: above the current one and above every change read, so the
        changes we accepted are judged by the users they were made under."""
        current = parse_object_name("U", self.state.get_config(domain, "users") or "") or 0
        newest = parse_object_name("C", self.state.newest_object(domain, "C.")) or 0
        return self._next_id(max(current, newest))

    async def remove_user(self, domain: str, public: str) -> None:
        """Remove the user with key `public` (hex) from `domain`: a new `U.x` without them and
        with a new domain key for the others (admins only). Changes made from then on use the
        new key, so the removed user can read none of them, and changes they sign from then on
        are refused by every reader. Old content keeps its old key (see `rekey`)."""
        key = _parse_key(public)
        async with self._session(domain) as session:
            written = await remove_user(
                session.exchange, self.state, domain, self.identity, session.keyring,
                self._users_id(domain), key,
            )  # fmt: skip
            await self._users_written(session.exchange, domain, written)

    async def rekey(
        self, domain: str, *, everything: bool = False, grace_ms: int = DEFAULT_GRACE_MS
    ) -> None:
        """A new domain key for the same users (admins only): a new `U.x`; new changes use it.
        With `everything` (``rekey --all``) every change read so far is also written again
        under the new key, as a truncation's base, and the old change files go after
        `grace_ms`; a domain with no change yet only gets the new key. (Parts of large files
        keep the key they were written with: their names are their ids, and an object is
        never rewritten.)"""
        async with self._session(domain) as session:
            require_admin(self.state, domain, self.identity, "change the domain key")
            if everything:
                await sync_session(session)  # the base is to hold every change there is
            written = await rekey(
                session.exchange, self.state, domain, self.identity, session.keyring,
                self._users_id(domain),
            )  # fmt: skip
            session.keyring = (
                await self._users_written(session.exchange, domain, written) or session.keyring
            )
            if everything and fossils_below(self.state, domain):  # none: nothing to write again
                await truncate(session, grace_ms)

    async def truncate(
        self, domain: str, grace_ms: int = DEFAULT_GRACE_MS, before: int | None = None
    ) -> Truncation:
        """seed 004 `A.x` truncate: merge the changes read so far (those below change id
        `before`, if given) into a new base and ask every client to delete them once
        `grace_ms` have passed (`weshare.truncate`). Syncs first, so the base is current."""
        async with self._session(domain) as session:
            await sync_session(session)
            return await truncate(session, grace_ms, before)

    async def join(self, invite: bytes, folder: Path | str, user_name: str = "") -> str:
        """Join the domain an invite sealed to us names, shared from local `folder`; returns the
        domain. Sync to fetch its files."""
        self._writable()
        opened = open_invite(self.identity, invite)
        domain = opened.config.get("domain")
        exchanges = opened.config.get("exchanges")
        if not isinstance(domain, str) or not _DOMAIN.match(domain):
            raise InvalidFile("invite: no valid domain")
        admins = opened.config.get("admins")
        if not isinstance(exchanges, list) or not exchanges:
            raise InvalidFile("invite: no exchange")
        if not isinstance(admins, list) or not admins or not all(_is_key(a) for a in admins):
            raise InvalidFile("invite: no valid admins")
        if self.state.get_config(domain, "folder") is not None:
            raise UsageError(f"already a member of {domain}")
        configs = [config for config in exchanges if isinstance(config, Mapping)]
        path = await asyncio.to_thread(self._new_folder, domain, folder, configs)
        with self.state.transaction():
            self.state.set_config(domain, "folder", str(path))
            self.state.set_config(domain, "admins", json.dumps(admins))
            self._store_exchanges(domain, exchanges)
            self.state.set_config(domain, "name", user_name)
        return domain

    async def sync(self, domain: str) -> SyncReport:
        """Synchronize `domain` once: push local changes, pull remote ones, apply."""
        async with self._session(domain) as session:
            return await sync_session(session)

    async def choose(self, domain: str, ref: str, message: str = "") -> SyncReport:
        """End a fork by keeping head `ref` (see `forks`), then sync."""
        async with self._session(domain) as session:
            await choose(session, ref, message)
            return await sync_session(session)

    def forks(self, domain: str) -> tuple[Fork, ...]:
        """Open forks, as of the last sync."""
        return self.resolution(domain).forks

    def resolution(self, domain: str) -> Resolution:
        """Where every version seen belongs (`Resolution.places`) and the open forks."""
        self._require(domain)
        return resolve(self.state.versions(domain))

    def log(self, domain: str) -> list[LogRow]:
        """Every version seen, oldest first."""
        self._require(domain)
        return list(self.state.log(domain).values())

    def status(self, domain: str) -> DomainStatus:
        """Members, files, pending pushes, forks, refused remote files, writers seen."""
        folder = self._require(domain)
        files = self.state.files(domain)
        return DomainStatus(
            domain, folder, self.state.members(domain), len(files),
            sum(1 for row in files.values() if row.push), len(self.forks(domain)),
            self.state.refused(domain), self.state.writers(domain),
            [redact(config) for config in self._exchanges(domain)],
        )  # fmt: skip


def _keyring(state: State, domain: str) -> Keyring:
    value = state.get_config(domain, "keyring")
    if value is None:
        raise UsageError(f"no key for {domain}")
    return Keyring.decode(bytes.fromhex(value))


def _parse_key(public: str) -> bytes:
    try:
        key = bytes.fromhex(public)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise UsageError("a public key is 64 hex digits")
    return key


def _is_key(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )
