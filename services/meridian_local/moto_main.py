"""``python -m meridian_local.moto_main``: moto's server, with its DynamoDB stream records numbered one at a time.

moto numbers a stream record ``len(records) + start`` and appends it afterwards, in whichever of the
server's request threads made the write. Two writes to one table at once can therefore get the same
sequence number, which DynamoDB Streams never gives: a shard's sequence numbers are unique and increase
with every record. The replication emulator reads shards by sequence number (AT_/AFTER_SEQUENCE_NUMBER)
and checks them for gaps, so a duplicate read as a rewritten history (a stream gap) under concurrent
writes. Numbering and appending under one lock gives the documented order; nothing else of moto changes.
``tests/local/test_moto_behaviour.py`` shows the duplicate with moto alone and its absence here.
"""

from __future__ import annotations

import threading
from typing import Any

from moto.dynamodb.models.table import StreamShard

_numbering = threading.Lock()
_add = StreamShard.add


def _add_in_order(self: StreamShard, old: Any, new: Any) -> None:
    with _numbering:
        _add(self, old, new)


def main() -> None:
    StreamShard.add = _add_in_order  # type: ignore[method-assign]
    from moto.server import main as moto_main

    moto_main()


if __name__ == "__main__":
    main()
