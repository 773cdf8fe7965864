"""The SQL and the paging of the directory's search (seed 000, "Search Directory").

Matching records are read in mailbox order, a chunk at a time, by key (``UserID > last``), each
chunk one query that also brings the QMail servers when they are asked for. Pages are as many
whole rows as fit the request's limit (at least one row each), so the page asked for is found by
walking the rows before it; `Pager` does that walk, without I/O. Column and operator SQL come
from fixed tables in this module, never from request bytes; every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from records.directory import (
    QMAIL_KEYS,
    TRAILER,
    Condition,
    Operator,
    Row,
    SearchKey,
    SearchRequest,
    UpdateKey,
    encode_row,
)

CHUNK_ROWS = 256
"""Matching records read per query."""
MAX_ROWS_SCANNED = 100_000
"""Matching records a search walks at most (pages beyond are empty)."""
MAX_PAGE_ROWS = 0xFFFF  # seed 000: "How many rows where returned up to 65,535"

_TEXT_SQL = {
    UpdateKey.DISPLAY_NAME: "U.PublicAlias",
    UpdateKey.DESCRIPTION: "U.PublicDescription",
    UpdateKey.AVATAR_NAME: "U.AvatarName",
}
_NUMBER_SQL = {UpdateKey.SENDING_PRICE: "U.SendingPrice", UpdateKey.MAILBOX: "U.UserID"}
_QMAIL_SQL = (
    "(SELECT UM.QMailID FROM USER_MAILSERVER UM WHERE UM.UserID = U.UserID AND UM.Slot = ?)"
)
_COMPARE_SQL = {
    Operator.NOT_EQUAL: "{col} != ?",
    Operator.EQUAL: "{col} = ?",
    Operator.GREATER: "{col} > ?",
    Operator.LESS: "{col} < ?",
    # instr, not LIKE: '%' and '_' in a search are the characters themselves
    Operator.CONTAINS: "instr({col}, ?) > 0",
    Operator.NOT_CONTAINS: "instr({col}, ?) = 0",
}
_RESULTS_OVERHEAD = 13 + len(TRAILER)  # results header (keys 0-3) and the trailer
# SQLite integers are signed 64-bit, a where clause's number up to 2^64 - 1 (8 bytes). Stored
# numbers (mailbox: 7 bytes, price: 3) are far below 2^63 - 1, so comparing with the operand
# capped there gives the same answer, where binding the operand itself would overflow.
_SQL_INTEGER_MAX = (1 << 63) - 1
_FIELDS = "U.UserID, U.PublicAlias, U.PublicDescription, U.SendingPrice, U.AvatarName," + (
    " U.PathToAvatarFile"
)


def where_sql(conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    """SQL for the where / AND / OR clauses, left to right (``(a AND b) OR c``), and its
    parameters. Column and operator SQL come from this module's fixed tables."""
    if not conditions:
        return "1", []
    expression = ""
    params: list[Any] = []
    for condition in conditions:
        column_params: list[Any] = []
        if condition.column in _TEXT_SQL:
            column = _TEXT_SQL[UpdateKey(condition.column)]
            operand: Any = condition.operand
        elif condition.column in QMAIL_KEYS:
            column = _QMAIL_SQL
            column_params = [condition.column - UpdateKey.QMAIL_FIRST]
            operand = int(condition.operand).to_bytes(8, "big")  # QMailID blobs: memcmp order
        else:
            column = _NUMBER_SQL[UpdateKey(condition.column)]
            operand = min(int(condition.operand), _SQL_INTEGER_MAX)
        clause = _COMPARE_SQL[condition.operator].format(col=column)
        clause_params = [*column_params, operand]
        if condition.join == SearchKey.WHERE:
            expression = f"({clause})"
        else:
            joiner = "AND" if condition.join == SearchKey.AND else "OR"
            expression = f"({expression} {joiner} {clause})"
        params += clause_params
    return expression, params


def chunk_query(request: SearchRequest) -> tuple[str, list[Any]]:
    """One query for the next chunk of matching records after a mailbox (the parameter list
    ends with that mailbox's placeholder value -1 and the chunk size; the caller sets the
    mailbox). Rows: UserID, alias, description, price, avatar name, avatar path, then QMail
    slot and id (one row per server, NULLs if none) when a QMail column is asked for."""
    where, params = where_sql(request.conditions)
    records = (
        f"SELECT {_FIELDS} FROM USER U WHERE U.UserID > ? AND {where} ORDER BY U.UserID LIMIT ?"
    )
    chunk_params = [-1, *params, CHUNK_ROWS]
    if not any(c in QMAIL_KEYS for c in request.columns):
        return records, chunk_params
    joined = (
        f"SELECT P.*, UM.Slot, UM.QMailID FROM ({records}) P"
        " LEFT JOIN USER_MAILSERVER UM ON UM.UserID = P.UserID ORDER BY P.UserID, UM.Slot"
    )
    return joined, chunk_params


class Match:
    """One matching record as read: its fields, its QMail servers, its avatar file's path."""

    def __init__(self, fields: tuple[Any, ...]) -> None:
        self.user = int(fields[0])
        self.name, self.description, self.price, self.avatar_name, self.path = fields[1:6]
        self.qmail: dict[int, bytes] = {}

    def row(self, columns: Sequence[int], avatar: bytes | None) -> Row:
        """The result row of `columns`, with `avatar` as the avatar column."""
        out: list[bytes | None] = []
        for column in columns:
            if column == UpdateKey.MAILBOX:
                out.append(self.user.to_bytes(7, "big"))
            elif column == UpdateKey.DISPLAY_NAME:
                out.append(_utf8(self.name))
            elif column == UpdateKey.DESCRIPTION:
                out.append(_utf8(self.description))
            elif column == UpdateKey.AVATAR_NAME:
                out.append(_utf8(self.avatar_name))
            elif column == UpdateKey.SENDING_PRICE:
                out.append(None if self.price is None else int(self.price).to_bytes(3, "big"))
            elif column == UpdateKey.AVATAR:
                out.append(avatar)
            else:
                out.append(self.qmail.get(column))
        return tuple(out)


def matches(rows: Sequence[tuple[Any, ...]]) -> list[Match]:
    """Group a chunk query's rows by record (QMail servers come one row each)."""
    out: list[Match] = []
    for row in rows:
        if not out or out[-1].user != row[0]:
            out.append(Match(row))
        if len(row) > 6 and row[6] is not None:
            out[-1].qmail[UpdateKey.QMAIL_FIRST + int(row[6])] = bytes(row[7])
    return out


class Pager:
    """Walks matching rows in order and keeps those of the page asked for. Pure."""

    def __init__(self, request: SearchRequest) -> None:
        self.columns = request.columns
        self.wanted = request.page
        self.budget = request.limit_kb * 1024 - _RESULTS_OVERHEAD
        self.page = 0
        self.used = 0
        self.count = 0  # rows on the current page
        self.scanned = 0
        self.done = False

    def take(self, row_size: int) -> bool:
        """Place the next row of `row_size` bytes; True if it is on the page asked for. Sets
        `done` once that page is complete (this row then starts the next one, not taken)."""
        self.scanned += 1
        if self.count and (self.used + row_size > self.budget or self.count == MAX_PAGE_ROWS):
            if self.page == self.wanted:
                self.done = True
                return False
            self.page, self.used, self.count = self.page + 1, 0, 0
        self.used += row_size
        self.count += 1
        if self.scanned >= MAX_ROWS_SCANNED:
            self.done = True
        return self.page == self.wanted

    def size(self, match: Match, avatar_size: int | None) -> int:
        """The encoded size of `match`'s row (an avatar of that size, not read)."""
        stand_in = None if avatar_size is None else bytes(avatar_size)
        return len(encode_row(self.columns, match.row(self.columns, stand_in)))


def _utf8(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8")
