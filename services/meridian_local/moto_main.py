"""``python -m meridian_local.moto_main``: moto's server, with DynamoDB's per-item atomicity and stream order.

moto reads an item, computes an UpdateItem's result and writes it back without a lock, in whichever of the
server's request threads made the call: two concurrent ADDs to one counter can both start from the same
value, and one acknowledged increment is lost (measured: 799 of 800 from 8 threads; a game day test saw a
counter shard one below what it acknowledged). DynamoDB applies every write to an item atomically, and
conditions are evaluated against the item as it is. Here every item write (PutItem, UpdateItem,
DeleteItem, and TransactWriteItems, which uses them) runs under one lock.

moto numbers a stream record ``len(records) + start`` and appends it afterwards, in whichever of the
server's request threads made the write. Two writes to one table at once can therefore get the same
sequence number, which DynamoDB Streams never gives: a shard's sequence numbers are unique and increase
with every record. The replication emulator reads shards by sequence number (AT_/AFTER_SEQUENCE_NUMBER)
and checks them for gaps, so a duplicate read as a rewritten history (a stream gap) under concurrent
writes. Numbering and appending under one lock gives the documented order.

Nothing else of moto changes. ``tests/local/test_moto_behaviour.py`` shows both defects with moto alone and
their absence with these changes. One consequence: no write lands inside a transaction any more, so moto's
rollback of a cancelled transaction no longer erases other requests' writes in the local run (the service
uses no transactions anyway).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import StreamShard

_numbering = threading.Lock()
_add = StreamShard.add
#: Reentrant: a transaction's writes go through the same methods.
_writing = threading.RLock()
WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")


def _atomic(write: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(write)
    def one_at_a_time(*args: Any, **kwargs: Any) -> Any:
        with _writing:
            return write(*args, **kwargs)

    return one_at_a_time


def _add_in_order(self: StreamShard, old: Any, new: Any) -> None:
    with _numbering:
        _add(self, old, new)


def patch() -> None:
    """What this module changes of moto, in this process."""
    StreamShard.add = _add_in_order  # type: ignore[method-assign]
    for name in WRITES:
        setattr(DynamoDBBackend, name, _atomic(getattr(DynamoDBBackend, name)))


def main() -> None:
    patch()
    from moto.server import main as moto_main

    moto_main()


if __name__ == "__main__":
    main()
