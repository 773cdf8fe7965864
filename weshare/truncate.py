"""Truncation (seed 004 `A.x` "Truncate: delete oldest change files ... merge of oldest files"):
old change files merged into a new *base*, then deleted in two phases, without a lock.

Phase 1 (the user who truncates): every version read so far from change files below a cutoff
goes into its lineage's *heads* (the versions no other of them follows); each head is written
again, content and all, into one or more new change files (the base), as an *alias*: its
origin is ``=C.<x>/<n>/<writer hex>``, "this entry is version ``C.<x>/<n>`` by that writer".
A reader records an alias under the version it stands for, so a reader that had read the old
files sees nothing new and one that comes later reads the same versions from the base; later
changes that name the old versions as their origin keep working for both. Then an `A.x`
(truncate) names the base, the change files it replaces (the *fossils*: only files this user
read and accepted, so a concurrent writer's change that it had not seen is never among them)
and the time after which they may go (`not_before`, the grace period).

Phase 2 (every client, on each sync): once `not_before` has passed and the base has been read
and accepted here, the fossils are deleted from the exchange (deleting is idempotent, so
several clients doing it is harmless). The grace period lets clients that were in the middle
of a sync, or offline for less than it, read the base before the old files go, as Duplicacy's
two-step "fossil" collection does. Parts are not deleted: a writer may reuse a part it knows
is on the exchange at any moment, and no client can tell when none will.
"""

from __future__ import annotations

from weshare.crypto import encrypt, sign_file
from weshare.errors import ExchangeError, UsageError
from weshare.formats import ActionFile, ActionType, FileChange, Truncation
from weshare.ids import parse_object_name
from weshare.lineage import Version, alias_of
from weshare.parts import diff_parts
from weshare.state import LogRow, State
from weshare.transfer import Session, next_change_name

DEFAULT_GRACE_MS = 24 * 3600 * 1000  # fossils stay a day after the base is written
BASE_ENTRIES = 4096
SWEEP_EVERY_MS = 24 * 3600 * 1000  # how often a client sweeps a domain's exchanges
LEFTOVER_AGE_S = 24 * 3600.0  # a temporary file this old is no put still running


def _ancestry(version: Version, rows: dict[str, LogRow]) -> tuple[str, ...]:
    """Every version `version` descends from, through origins (those not in `rows` too)."""
    seen: set[str] = set()
    todo = list(version.origin)
    while todo:  # bounded: each ref is expanded once
        ref = todo.pop()
        if ref not in seen:
            seen.add(ref)
            row = rows.get(ref)
            if row is not None:
                todo.extend(row.version.origin)
    return tuple(sorted(seen))


def base_entries(rows: dict[str, LogRow]) -> list[FileChange]:
    """The base that stands for the versions `rows`: one alias entry per head among them, its
    origins the alias, then every version it descends from. A change made concurrently may
    follow one of those; a reader that gets the head from the base links the two through it
    as a reader that read the old files does (`lineage.resolve`), so both see the same fork."""
    followed = {origin for row in rows.values() for origin in row.version.origin}
    entries = []
    for ref, row in rows.items():
        if ref in followed:
            continue
        version = row.version
        ids = row.part_ids
        path = (version.path,) if version.path is not None else ()
        entry = FileChange(
            path,
            (alias_of(version), *_ancestry(version, rows)),
            tuple(ids),
            row.message,
            diff_parts([], ids),
            row.data or b"",
        )
        entries.append(entry)
    return entries


def fossils_below(state: State, domain: str, cutoff: int = 1 << 63) -> list[str]:
    """The change files read and accepted here whose id is below `cutoff`: what a truncation
    at `cutoff` replaces (none: nothing to truncate)."""
    return [
        name
        for name in state.accepted(domain, "C.")
        if (parse_object_name("C", name) or 0) < cutoff
    ]


async def truncate(session: Session, grace_ms: int, before: int | None = None) -> Truncation:
    """Phase 1: write the base of every change read below `before` (default: all read), then
    the `A.x` that names it and its fossils. Returns what the action says."""
    from weshare.sync import commit  # sync imports this module's phase 2

    state, domain = session.state, session.domain
    cutoff = (1 << 63) if before is None else before
    fossils = fossils_below(state, domain, cutoff)
    if not fossils:
        raise UsageError("nothing to truncate")
    rows = {ref: row for ref, row in state.log(domain).items() if row.version.change_id < cutoff}
    entries = base_entries(rows)
    bases = []
    for start in range(0, max(len(entries), 1), BASE_ENTRIES):
        batch = entries[start : start + BASE_ENTRIES]
        if not batch:
            batch = [FileChange((), (), (), "truncated: nothing left")]
        bases.append(await commit(session, [(entry, None) for entry in batch]))
    action = Truncation(tuple(bases), tuple(fossils), session.clock() + grace_ms)
    plaintext = ActionFile(ActionType.TRUNCATE, action.encode()).encode()
    key_id, key = session.keyring.current
    for _ in range(32):  # bounded: each try takes a higher id
        name = next_change_name(session, "A")
        full = session.full(name)
        body = sign_file(session.identity, full, encrypt(key_id, key, full, plaintext))
        if await session.exchange.put_if_absent(full, body):
            with state.transaction():
                state.add_truncation(domain, name, action)
                state.mark_object(domain, name, None)
            return action
    raise UsageError("could not find a free action id")


async def collect_fossils(session: Session) -> int:
    """Phase 2: delete the fossils of truncations whose grace period is over and whose base
    we read and accepted. Returns how many change files were deleted."""
    state, domain = session.state, session.domain
    deleted = 0
    now = session.clock()
    for name, action in state.truncations(domain):
        if action.not_before > now:
            continue  # the grace period: clients still reading the old files finish first
        if set(action.bases) - set(state.accepted(domain, "C.", action.bases)):
            continue  # not read here (yet): never delete what we cannot see replaced
        for fossil in action.fossils:
            await session.exchange.delete(session.full(fossil))
            deleted += 1
        with state.transaction():
            state.finish_truncation(domain, name)
    return deleted


async def sweep_leftovers(session: Session) -> int:
    """Once a day per client and domain: remove from the exchanges what writers killed midway
    (or cut off) left there more than a day ago, temporary files of puts that never finished
    (`Exchange.sweep`; a folder's or SFTP server's clock that lags ours by more than a day
    could take a put in progress, which then fails and is done again by its next sync).
    Returns how many were removed. Housekeeping: an exchange that fails it (one of several
    may be down while the others serve the sync) does not fail the sync, and the next sync
    sweeps again."""
    state, domain = session.state, session.domain
    now = session.clock()
    if now - int(state.get_config(domain, "swept") or 0) < SWEEP_EVERY_MS:
        return 0
    try:
        removed = await session.exchange.sweep(f"{domain}/", LEFTOVER_AGE_S)
    except ExchangeError:
        return 0
    with state.transaction():
        state.set_config(domain, "swept", str(now))
    return removed
