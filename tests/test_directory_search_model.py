"""Search semantics against a model: random profiles and random where / AND / OR clauses give
the same rows from SQLite as from a plain Python evaluation (SQL's three-valued logic: a clause
on an absent field is unknown, and a row is returned only if the whole condition is true)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.directory.database import InlineDatabase
from node.directory.store import DirectoryStore
from records.directory import (
    Condition,
    MailboxNumber,
    Operator,
    Profile,
    SearchKey,
    SearchRequest,
    SendingPrice,
    UpdateKey,
)

pytestmark = pytest.mark.timeout(120)

ALPHABET = "ab%_'é"
texts = st.text(ALPHABET, min_size=1, max_size=4)
Truth = bool | None


def _and(a: Truth, b: Truth) -> Truth:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: Truth, b: Truth) -> Truth:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _clause(value: int | str | None, op: Operator, operand: int | str) -> Truth:
    if value is None:
        return None
    if op == Operator.CONTAINS:
        return str(operand) in str(value)
    if op == Operator.NOT_CONTAINS:
        return str(operand) not in str(value)
    compare = {
        Operator.NOT_EQUAL: value != operand,
        Operator.EQUAL: value == operand,
        Operator.GREATER: value > operand,  # type: ignore[operator]
        Operator.LESS: value < operand,  # type: ignore[operator]
    }
    return compare[op]


def _value(mailbox: MailboxNumber, profile: Profile, column: int) -> int | str | None:
    if column == UpdateKey.MAILBOX:
        return int(mailbox)
    if column == UpdateKey.DISPLAY_NAME:
        return profile.display_name
    if column == UpdateKey.DESCRIPTION:
        return profile.description
    price = profile.sending_price
    return None if price is None else int.from_bytes(price.to_bytes(), "big")


profiles = st.builds(
    Profile,
    display_name=texts,
    description=st.none() | texts,
    sending_price=st.none() | st.builds(SendingPrice, st.integers(0, 2), st.integers(0, 3)),
)
text_clause = st.tuples(
    st.sampled_from([UpdateKey.DISPLAY_NAME, UpdateKey.DESCRIPTION]),
    st.sampled_from(list(Operator)),
    texts,
)
number_clause = st.tuples(
    st.sampled_from([UpdateKey.SENDING_PRICE, UpdateKey.MAILBOX]),
    st.sampled_from([Operator.NOT_EQUAL, Operator.EQUAL, Operator.GREATER, Operator.LESS]),
    st.integers(0, 0x0203),
)
_counter = itertools.count()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(profiles, min_size=1, max_size=6),
    st.lists(text_clause | number_clause, min_size=1, max_size=4),
    st.lists(st.sampled_from([SearchKey.AND, SearchKey.OR]), min_size=4, max_size=4),
)
def test_sql_search_matches_the_model(
    tmp_path: Path,
    people: list[Profile],
    clauses: list[tuple[int, Operator, int | str]],
    joins: list[SearchKey],
) -> None:
    conditions = tuple(
        Condition(SearchKey.WHERE if i == 0 else joins[i], column, op, operand)
        for i, (column, op, operand) in enumerate(clauses)
    )
    boxes = [MailboxNumber(6, 1, 0x100 + i) for i in range(len(people))]

    expected = []
    for box, profile in zip(boxes, people, strict=True):
        truth: Truth = None
        for condition in conditions:
            value = _value(box, profile, condition.column)
            clause = _clause(value, condition.operator, condition.operand)
            if condition.join == SearchKey.WHERE:
                truth = clause
            elif condition.join == SearchKey.AND:
                truth = _and(truth, clause)
            else:
                truth = _or(truth, clause)
        if truth is True:
            expected.append(box.to_bytes())

    async def run() -> list[bytes]:
        store = await DirectoryStore.open(
            InlineDatabase.open(":memory:"), tmp_path / f"case-{next(_counter)}"
        )
        try:
            for version, (box, profile) in enumerate(zip(boxes, people, strict=True)):
                await store.put(
                    box, profile, version=version, owner_key=b"k", ticket=b"t", signature=b"s"
                )
            request = SearchRequest(bytes(16), bytes(16), (UpdateKey.MAILBOX,), conditions)
            results = await store.search(request)
            return [row[0] or b"" for row in results.rows]
        finally:
            await store.close()

    assert asyncio.run(run()) == expected
