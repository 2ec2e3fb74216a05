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

moto runs a TransactWriteItems by deep-copying every table it touches, applying the actions one by one, and
putting the copies back if one fails. The copy costs the whole table (the reservations table grows with
every reservation, and the owner mechanism's strong writes are all transactions), and under the write lock
it would hold every other write up. Here a transaction is what DynamoDB documents: every condition is
evaluated against the items as they are, and the transaction is cancelled (``TransactionCanceledException``
with one reason per action, ``ALL_OLD`` items included) before anything is written; else all of its writes
are applied together, under the lock. Only the touched items are kept aside, for the case an action fails
while it is applied.

Nothing else of moto changes. ``tests/local/test_moto_behaviour.py`` shows the first two defects with moto
alone and their absence with these changes, and checks the transactions' semantics.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
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


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """All conditions first, against the items as they are; then all writes, or none."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    actions, targets = [], set()
    reasons: list[tuple[str, str, dict[str, Any]] | tuple[None, None, None]] = []
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        kind, op = next(iter(entry.items()))
        if kind not in {"ConditionCheck", "Put", "Delete", "Update"}:
            raise MockValidationException(f"Unsupported transaction operation {kind}")
        table = self.get_table(op["TableName"])
        source = op["Item"] if kind == "Put" else op["Key"]
        key = {table.hash_key_attr: source[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = source[table.range_key_attr]
        target = (table.name, str(sorted(key.items())))
        if target in targets:
            raise MultipleTransactionsException()
        targets.add(target)
        current = self.get_item(table.name, key)
        condition = op.get("ConditionExpression")
        if condition is not None and not get_filter_expression(
                condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")).expr(current):
            old = current.to_json()["Attributes"] if current is not None and \
                op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" else None
            reasons.append(("ConditionalCheckFailed", "The conditional request failed", old))  # type: ignore[arg-type]
        else:
            reasons.append((None, None, None))
        actions.append((kind, op, table, key, copy.deepcopy(current)))
    if any(code is not None for code, _, _ in reasons):
        raise TransactionCanceledException(reasons)
    marks = {id(t): (t, len(t.stream_shard.items)) for _, _, t, _, _ in actions if t.stream_shard is not None}
    applied = 0  # the action being applied when one fails
    try:
        for kind, op, table, key, _ in actions:
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if kind == "Put":
                self.put_item(table.name, op["Item"])
            elif kind == "Delete":
                self.delete_item(table.name, key)
            elif kind == "Update":
                self.update_item(table.name, key, update_expression=op["UpdateExpression"], condition_expression=None,
                                 expression_attribute_names=names, expression_attribute_values=values)
            applied += 1
    except Exception as exc:
        for _, _, table, key, before in actions:  # put the touched items back as they were, and their records
            hash_value = DynamoType(key[table.hash_key_attr])
            items: Any = table.items
            if table.range_key_attr is not None:
                slot = DynamoType(key[table.range_key_attr])
                items = items.setdefault(hash_value, {})
            else:
                slot = hash_value
            if before is None:
                items.pop(slot, None)
            else:
                items[slot] = before
        for table, length in marks.values():
            if table.stream_shard is not None:
                del table.stream_shard.items[length:]
        failed: list[Any] = [(None, None, None)] * len(actions)
        failed[applied] = (type(exc).__name__, str(exc), None)
        raise TransactionCanceledException(failed) from exc


def patch() -> None:
    """What this module changes of moto, in this process."""
    StreamShard.add = _add_in_order  # type: ignore[method-assign]
    DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
    for name in WRITES:
        setattr(DynamoDBBackend, name, _atomic(getattr(DynamoDBBackend, name)))


def main() -> None:
    patch()
    from moto.server import main as moto_main

    moto_main()


if __name__ == "__main__":
    main()
