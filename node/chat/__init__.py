"""Client library for chat apps (seed 003, DESIGN §6): metas, devices, handshakes, end-to-end
encrypted offline messages and receipts, over a running `node.DHTNode`.

    async with ChatClient(node, me, name="alice") as chat:
        bob = await chat.lookup(bob_uid)
        await chat.handshake(bob_uid)
        await chat.send(bob_uid, "hello")
        async for entry in chat.messages():
            print(entry.text)
"""

from node.chat.client import ChatClient, Contact, Device, InboxEntry, Profile, Sent
from records.errors import ChatError, MessageTooLarge, NoHandshake, UnknownUser

__all__ = [
    "ChatClient",
    "ChatError",
    "Contact",
    "Device",
    "InboxEntry",
    "MessageTooLarge",
    "NoHandshake",
    "Profile",
    "Sent",
    "UnknownUser",
]
