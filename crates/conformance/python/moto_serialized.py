"""moto_server made serializable for DynamoDB, as the real service is.

moto's TransactWriteItems is not isolated: it deep-copies every table it touches and,
when a transaction is cancelled, puts those copies back, undoing whatever other
requests wrote meanwhile (measured here: a worker ended with more free capacity than
it has). The copies also make each transaction cost time in proportion to the table.
Lineup's invariants rest on DynamoDB transactions being serializable, so:

1. one lock around every DynamoDB request (SQS is not held by it: long polls still
   block only themselves);
2. under that lock, a transaction's conditions are all checked before anything is
   written; if one fails, it is cancelled with per-item reasons and nothing is
   written, so the table copies (and their rollback) are skipped.

Usage: python moto_serialized.py -H 127.0.0.1 -p PORT   (moto_server's flags)
"""

import copy as _copy
import sys
import threading

import moto.dynamodb.models as ddb_models
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import TransactionCanceledException
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_lock = threading.RLock()
_skip_table_copies = False
_deepcopy = _copy.deepcopy


class _CopyShim:
    """Stands in for the `copy` module inside moto.dynamodb.models."""

    def __getattr__(self, name):
        return getattr(_copy, name)

    @staticmethod
    def deepcopy(x, memo=None):
        if _skip_table_copies and isinstance(x, Table):
            return x
        return _deepcopy(x, memo)


ddb_models.copy = _CopyShim()

_call_action = DynamoHandler.call_action


def _serialized_call(self):
    with _lock:
        return _call_action(self)


DynamoHandler.call_action = _serialized_call

_transact = ddb_models.DynamoDBBackend.transact_write_items


def _key_of(backend, op_type, op):
    if op_type != "Put":
        return op["Key"]
    table = backend.get_table(op["TableName"])
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def _checked_transact(self, transact_items):
    global _skip_table_copies
    try:
        reasons, failed = [], False
        for item in transact_items:
            op_type, op = next(iter(item.items()))
            cond = op.get("ConditionExpression")
            if cond is None:
                reasons.append((None, None, None))
                continue
            current = self.get_item(op["TableName"], _key_of(self, op_type, op))
            expr = get_filter_expression(cond, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues"))
            if expr.expr(current):
                reasons.append((None, None, None))
            else:
                reasons.append(("ConditionalCheckFailed", "The conditional request failed", None))
                failed = True
    except Exception:
        # Anything unusual: moto's own path, copies and all.
        return _transact(self, transact_items)
    if failed:
        raise TransactionCanceledException(reasons)
    _skip_table_copies = True
    try:
        return _transact(self, transact_items)
    finally:
        _skip_table_copies = False


ddb_models.DynamoDBBackend.transact_write_items = _checked_transact

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
