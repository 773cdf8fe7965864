"""Who may change a mailbox's record, and who has paid: the two plug-ins of a directory server.

Seed 000 proves ownership with RAIDA tickets and takes payment from RAIDA lockers; neither can
be reached from here, so both are `typing.Protocol`s injected into the server. The defaults:

* `QuorumTicketVerifier`: a `records.directory.Ticket` is good when at least `threshold` of the
  configured authority keys signed it (k of n, as RAIDA's 13 of 25), it names the mailbox, and it
  is neither future-dated nor expired.
* `NoCharge`: every service is free. `LockerPayments` keeps lockers in memory with a price per
  service and answers with the seed's 153 / 179 (tests and small deployments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from records.directory import (
    CLOUDCOIN_COIN_ID,
    Command,
    MailboxNumber,
    Payment,
    Status,
    Ticket,
)
from records.drd import TicketAuthorities

DEFAULT_CLOCK_SKEW_MS = 5 * 60 * 1000


class OwnershipVerifier(Protocol):
    """Decides whether a ticket proves that its owner key holds its mailbox."""

    async def verify(self, ticket: Ticket, now: int) -> None:
        """Return if `ticket` is good at `now`; raise `DirectoryError` with
        `Status.NOT_AUTHORIZED` otherwise."""
        ...


class QuorumTicketVerifier:
    """Accepts tickets signed by at least `threshold` of `authorities` (ed25519 public keys);
    `records.drd.TicketAuthorities` does the checking."""

    def __init__(
        self,
        authorities: Sequence[bytes],
        threshold: int,
        *,
        clock_skew_ms: int = DEFAULT_CLOCK_SKEW_MS,
    ) -> None:
        self.trusted = TicketAuthorities(tuple(authorities), threshold, clock_skew_ms)
        self.authorities = frozenset(self.trusted.keys)
        self.threshold = threshold
        self.clock_skew_ms = clock_skew_ms

    async def verify(self, ticket: Ticket, now: int) -> None:
        """See `OwnershipVerifier.verify`."""
        self.check(ticket, now)

    def check(self, ticket: Ticket, now: int) -> None:
        """The same check, synchronously (validators use it)."""
        self.trusted.check(ticket, now)


class PaymentVerifier(Protocol):
    """Takes payment for a service (seed 000 keys 1 and 2: coin code and locker code).

    The directory charges a change only once its store has found it newer than what it holds,
    with every other change held off until it is written; if the change still fails (the
    database does), or a search does, it calls `refund`."""

    async def charge(
        self, command: Command, mailbox: MailboxNumber | None, payment: Payment | None
    ) -> Status:
        """`Status.SUCCESS` if the service is paid for (or free), else the seed's
        `FEW_COINS_IN_LOCKER` (153) or `LOCKER_EMPTY_OR_NOT_EXISTS` (179)."""
        ...

    async def refund(
        self, command: Command, mailbox: MailboxNumber | None, payment: Payment | None
    ) -> None:
        """Give back what a successful `charge` with the same arguments took."""
        ...


class NoCharge:
    """Every service is free (the default)."""

    async def charge(
        self, command: Command, mailbox: MailboxNumber | None, payment: Payment | None
    ) -> Status:
        """Always `Status.SUCCESS`."""
        return Status.SUCCESS

    async def refund(
        self, command: Command, mailbox: MailboxNumber | None, payment: Payment | None
    ) -> None:
        """Nothing was taken."""


class LockerPayments:
    """Lockers held in memory: `lockers` maps a 16-byte locker code to the coins in it; a paid
    service takes `prices[command]` coins from the locker named in the request."""

    def __init__(
        self,
        prices: Mapping[Command, int],
        lockers: Mapping[bytes, int] | None = None,
        *,
        coin_code: int = CLOUDCOIN_COIN_ID,
    ) -> None:
        self.prices = dict(prices)
        self.lockers = dict(lockers or {})
        self.coin_code = coin_code

    async def charge(
        self, command: Command, mailbox: MailboxNumber | None, payment: Payment | None
    ) -> Status:
        """Take the price from the locker; 179 if there is none or it is empty, 153 if it holds
        too little (seed 000), 198 for a coin this server does not take."""
        price = self.prices.get(command, 0)
        if price <= 0:
            return Status.SUCCESS
        if payment is None:
            return Status.LOCKER_EMPTY_OR_NOT_EXISTS
        if payment.coin_code != self.coin_code:
            return Status.INVALID_PARAMETER
        held = self.lockers.get(payment.locker, 0)
        if held <= 0:
            return Status.LOCKER_EMPTY_OR_NOT_EXISTS  # seed 000: 179
        if held < price:
            return Status.FEW_COINS_IN_LOCKER  # seed 000: 153
        self.lockers[payment.locker] = held - price
        return Status.SUCCESS

    async def refund(
        self, command: Command, mailbox: MailboxNumber | None, payment: Payment | None
    ) -> None:
        """Put the price back into the locker it was taken from."""
        price = self.prices.get(command, 0)
        if price > 0 and payment is not None:
            self.lockers[payment.locker] = self.lockers.get(payment.locker, 0) + price
