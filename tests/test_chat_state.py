"""ChatState: what a chat device remembers, written so a crash keeps the old or the new state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.chat.state import ChatState


def test_state_survives_a_reload_and_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "chat.json"
    state = ChatState(path)
    state.mark_seen([(b"\x01" * 16, 2000)])
    state.add_peer(b"\x02" * 20, b"\x03" * 32)
    state.add_handshake(b"\x02" * 20)
    state.save(1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json"]  # no temporary left

    def crash(fd: int) -> None:
        raise OSError("disk gone")

    state.mark_seen([(b"\x04" * 16, 2000)])
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        state.save(1000)
    monkeypatch.undo()
    again = ChatState(path)  # the last complete state, not a partial one
    assert again.seen(b"\x01" * 16)
    assert not again.seen(b"\x04" * 16)
    assert again.peer_key(b"\x02" * 20) == b"\x03" * 32
    assert again.has_handshake(b"\x02" * 20)
    # expired ids are forgotten on the next save
    again.save(3000)
    assert not ChatState(path).seen(b"\x01" * 16)
