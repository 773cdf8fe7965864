"""The validator every node runs by default: one validator per known namespace."""

from __future__ import annotations

from records.chat import ChatValidator
from records.drd import DrdServersValidator, DrdValidator
from records.meta import MetaValidator
from records.presence import PresenceValidator
from records.validation import NamespacedValidator, Validator


def default_validators() -> dict[str, Validator]:
    """A fresh mapping of namespace to validator, for callers that add their own namespaces."""
    return {
        "presence": PresenceValidator(),
        "meta": MetaValidator(),
        "chat": ChatValidator(),
        "drd": DrdValidator(),
        "drd-servers": DrdServersValidator(),
    }


def default_validator() -> NamespacedValidator:
    """The `NamespacedValidator` over every namespace this version knows, with default limits."""
    return NamespacedValidator(default_validators())
