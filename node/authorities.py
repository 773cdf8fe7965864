"""The DRD ticket authorities shipped with the node (seed 000 workflow step 4: RAIDA servers
sign tickets; these are their stand-ins). Every node checks the tickets of the /drd/ entries it
stores and serves against this set unless its configuration names another
(`NodeConfig.drd_authorities`, ``python -m node --directory-authorities FILE``).

The keys below were made for this project and their private halves were not kept, so no ticket
passes them: replace them with the real authorities' ed25519 keys before release. A private or
test network mints its own (``python -m node.directory mint-authorities``) and gives every node
the file.
"""

from __future__ import annotations

from records.drd import TicketAuthorities

SHIPPED_AUTHORITIES = TicketAuthorities(
    keys=tuple(
        bytes.fromhex(key)
        for key in (
            "8b9f73774daa5aeadc42e0a62a2f70a7f15208e239afe3f42b42c929bf8ddd77",
            "93fd8ee5c127c40e3888101495ac10f2779898742adecf676f4083439a0722c9",
            "daa5e0e51e08bffef43a3941fd882a52afe590cae285986cafa50a64d6fb8bc4",
            "b3488d57e5ab2ec030b2f7a17514d01002439c5e9f770d404e7646efbb0c1a04",
            "ae117823f1fe5d7d58ba153001d5dcfda09f8d52c369f65cb630fb716d13af9e",
            "6a6c9319e3a802863ce1a0d3abd71d35db208a47d84f08bc6bc6f1434e752a7d",
            "f11646721b9e87a5e4b0a771028a600610c0fbf7ef086b2029f2cb9f79d5673b",
            "c56a6e4e9b1ec93c528f1a7b444323d98d00bb84e166f4e50feae443f51643cf",
            "889cccb5df96d0b2568cf5bf2db388f8e93c62107820a042d4dc5e21dce4d8ee",
            "afdf9c8d4ff9588bc69211a14cc1d7b6c6840c586061357ba7e9d3be85999ce4",
            "a970b95753691d79b33879d3dcab31b2f8faa9041d31404e358192902167c025",
            "adae4234d72a31603e172adce8c74dba24b8ae0d8862e947afa45dc90840e12d",
            "407f44769dab15b07680c001f42cc5a31c2858d3885fd0c10e598cf73760cae1",
            "2debdee7576bb818057f72b8f8be14a70827d32016398850945e3299d20af0dc",
            "65f9248d8dcc1e33b67de552fc6a057f9d1a3ea92970a5755527329ca882650c",
            "03629959cefeff065e9f4522dec7a9955af51db8511b8d7b4f39a6a4e76d97f6",
            "1d212a89d3eaf2d1a08dc489adffbee360091865c6a275e187e1c305f41f9a5c",
            "0a7bdba7e8340dbdb3deb528dcf225396b50847c52413968fc3c0a657c897790",
            "ef1453ae1cf1b19a085fe42df7912183ed18f8f7e3f18cff69bc5c3ddc7dc629",
            "de41196d3347e06bbf1ac482921f3e0fa16c53014b795787c9ca1a28bd387c18",
            "49e259d77d9e0531273896a584b37ed77619ad3cb90fabafcfaf66ff19194891",
            "278b57f4ddcf30dc44555142e7f0cb171ff0ea6b581c01fd6f6b751affd766c4",
            "951f68341d0ef4de3045cdbcaa28213ac4dc9b59a0964f602cfdeab36d06ade3",
            "e926208f674e7a01d9d97163c8bda63e3e2b50f884d8b6735b85143a3cee2a62",
            "f97b17ceb373bef68dfb76a2050a9956ff502ceae047882065575bb1b5a9d1a4",
        )
    ),
    threshold=13,  # as RAIDA's 13 of 25
)
"""25 authorities, 13 of which must sign a ticket."""
