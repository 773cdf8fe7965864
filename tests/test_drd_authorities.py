"""Every node checks DRD tickets: the ticket authorities' keys ship with the node
configuration (a default set), and a user can name others."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from node import DHTNode, NodeConfig
from node.authorities import SHIPPED_AUTHORITIES
from node.directory.ownership import QuorumTicketVerifier
from records import InvalidRecord, Record
from records.directory import MailboxNumber, Profile, authorize_update, mint_ticket
from records.drd import TicketAuthorities, make_drd_record
from records.identity import Identity

pytestmark = pytest.mark.timeout(30)

NOW = 1_767_225_600_000
AUTHORITIES = [Identity.from_seed(bytes([i + 170]) * 32) for i in range(5)]
OWNER = Identity.from_seed(b"authorities-owner".ljust(32, b"\x00"))
SERVER = Identity.from_seed(b"authorities-server".ljust(32, b"\x00"))
MAILBOX = MailboxNumber(6, 7, 70)
OURS = TicketAuthorities(tuple(a.public_key for a in AUTHORITIES), 3)


def entry(signers: list[Identity]) -> Record:
    """A /drd/ entry of MAILBOX under a ticket `signers` signed."""
    ticket = mint_ticket(signers, MAILBOX, OWNER.public_key, issued=NOW - 1000, expires=NOW + 10**8)
    profile = Profile(display_name="Ann")
    return make_drd_record(
        SERVER,
        MAILBOX,
        version=NOW,
        profile=profile,
        ticket=ticket.to_bytes(),
        owner_signature=authorize_update(OWNER, MAILBOX, profile, NOW).signature,
        host="10.0.0.1",
        port=8468,
        now=NOW,
    )


SELF_MADE = [Identity.from_seed(bytes([i + 190]) * 32) for i in range(13)]


def refusal(node_config: NodeConfig, record: Record) -> str | None:
    """Why a node with this configuration refuses `record` (None: it takes it)."""
    validator = DHTNode(node_config).validator
    try:
        validator.validate(record.key, record, NOW)
    except InvalidRecord as exc:
        return exc.reason
    return None


def test_a_node_with_the_default_configuration_refuses_self_made_tickets() -> None:
    """Before, only a node started with --directory-authorities checked tickets: with the
    default configuration any self-made ticket passed (and, being newest, won)."""
    assert refusal(NodeConfig(), entry(SELF_MADE)) == "bad_ticket"
    assert (
        refusal(NodeConfig(), entry(AUTHORITIES[:3])) == "bad_ticket"
    )  # not the shipped authorities either


def test_the_user_names_other_authorities() -> None:
    config = NodeConfig(drd_authorities=OURS)
    assert refusal(config, entry(AUTHORITIES[:3])) is None
    assert (
        refusal(config, entry(AUTHORITIES[:2])) == "bad_ticket"
    )  # two of five: short of the threshold
    assert refusal(config, entry(SELF_MADE)) == "bad_ticket"
    # a copy of a configuration with other authorities checks against those
    other = dataclasses.replace(NodeConfig(), drd_authorities=OURS)
    assert refusal(other, entry(AUTHORITIES[:3])) is None
    back = dataclasses.replace(other, drd_authorities=SHIPPED_AUTHORITIES)
    assert refusal(back, entry(AUTHORITIES[:3])) == "bad_ticket"
    # None: no ticket check at all (a node that cannot know the authorities)
    assert refusal(NodeConfig(drd_authorities=None), entry(SELF_MADE)) is None


def test_the_shipped_set_reads_like_an_authorities_file(tmp_path: Path) -> None:
    shipped = SHIPPED_AUTHORITIES
    assert 1 <= shipped.threshold <= len(shipped.keys)
    path = tmp_path / "authorities.json"
    path.write_text(shipped.to_json(), encoding="utf-8")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"threshold", "authorities"}
    assert TicketAuthorities.from_json(path.read_text(encoding="utf-8")) == shipped
    for bad in ['{"threshold": 1}', '{"threshold": 9, "authorities": ["00"]}', "[]"]:
        with pytest.raises(ValueError, match="authorities"):
            TicketAuthorities.from_json(bad)


def test_the_command_line_uses_the_shipped_set_unless_told_otherwise(tmp_path: Path) -> None:
    from node.__main__ import _drd_authorities, build_parser

    parse = build_parser().parse_args
    assert _drd_authorities(parse([])) == SHIPPED_AUTHORITIES
    path = tmp_path / "authorities.json"
    path.write_text(OURS.to_json(), encoding="utf-8")
    assert _drd_authorities(parse(["--directory-authorities", str(path)])) == OURS
    directory = tmp_path / "drd"
    directory.mkdir()
    assert _drd_authorities(parse(["--directory", str(directory)])) == SHIPPED_AUTHORITIES
    (directory / "authorities.json").write_text(OURS.to_json(), encoding="utf-8")
    assert _drd_authorities(parse(["--directory", str(directory)])) == OURS


def test_a_directory_server_trusts_its_nodes_authorities_unless_told_others(
    tmp_path: Path,
) -> None:
    from node.directory.server import DirectoryConfig, DirectoryServer
    from records.errors import DirectoryError

    node = DHTNode(NodeConfig(drd_authorities=OURS))
    ticket = mint_ticket(AUTHORITIES[:3], MAILBOX, OWNER.public_key, issued=NOW, expires=NOW + 1)
    server = DirectoryServer(DirectoryConfig(root=tmp_path), node)
    assert isinstance(server.ownership, QuorumTicketVerifier)
    server.ownership.check(ticket, NOW)  # the node's authorities signed it
    told = DirectoryServer(
        DirectoryConfig(root=tmp_path, authorities=(SELF_MADE[0].public_key,)), node
    )
    assert isinstance(told.ownership, QuorumTicketVerifier)
    with pytest.raises(DirectoryError):
        told.ownership.check(ticket, NOW)
