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

3. like DynamoDB, a TransactWriteItems retried with the same ClientRequestToken within
   10 minutes of its success is not applied again and answers success (the SDK retries
   with the token it filled in, so a response lost after the write was applied does not
   turn into a second write or a spurious cancellation).

Fault mode (LINEUP_MOTO_FAULTS="seed=7,rate=0.02"; off when unset): each DynamoDB
request, and each SQS send or delete, fails with probability `rate` (a seeded random
stream, so a run can be repeated; a kind not seen yet is drawn more often, so every
kind shows up early), as real services do under load:
- TransactWriteItems: TransactionCanceledException with a TransactionConflict or a
  ThrottlingError reason (nothing written);
- any DynamoDB operation: ProvisionedThroughputExceededException or ThrottlingException
  (400, nothing written), or an InternalServerError (500, nothing written);
- any of them: the request is applied, then its response is lost (500): the client
  cannot tell it from the previous case, and must retry safely;
- SQS SendMessage(Batch)/DeleteMessage(Batch): a 500, before or after applying.
Counts of what was injected are served at GET /lineup-faults (JSON).

Partition mode (LINEUP_MOTO_PARTITIONS="wcu=50,rcu=150", or "meter" to count without
limits): DynamoDB's per-partition-key throughput limits, scaled down, enforced as
DynamoDB enforces them; units consumed per key at GET /lineup-units (see partitions.py).

Usage: python moto_serialized.py -H 127.0.0.1 -p PORT   (moto_server's flags)
"""

import copy as _copy
import json
import os
import random
import sys
import threading
import time

import moto.dynamodb.models as ddb_models
import partitions
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

# ---- faults


def _parse_faults(spec):
    conf = dict(kv.split("=", 1) for kv in spec.split(",") if "=" in kv)
    return random.Random(int(conf.get("seed", "1"))), float(conf.get("rate", "0"))


_faults = _parse_faults(os.environ["LINEUP_MOTO_FAULTS"]) if os.environ.get("LINEUP_MOTO_FAULTS") else None
_fault_lock = threading.Lock()
injected = {}


# A kind not injected yet is drawn at this many times the rate, so that every kind
# shows up early in a run, however rare the requests it applies to (a run with few
# transactions would otherwise see no conflict at all, about one time in five).
_CATCH_UP = 10


def _draw(kinds):
    """One of `kinds` with probability `rate`, else None."""
    if _faults is None:
        return None
    rng, rate = _faults
    with _fault_lock:
        missing = [k for k in kinds if k not in injected]
        if missing and rng.random() < min(1.0, rate * _CATCH_UP):
            kind = rng.choice(missing)
        elif rng.random() < rate:
            kind = rng.choice(kinds)
        else:
            return None
        injected[kind] = injected.get(kind, 0) + 1
        return kind


def _ddb_error(status, kind, message, extra=None):
    body = {"__type": "com.amazonaws.dynamodb.v20120810#" + kind, "message": message}
    body.update(extra or {})
    return status, {"Content-Type": "application/x-amz-json-1.0", "status": status}, json.dumps(body)


def _lost(status_headers_body):
    return _ddb_error(500, "InternalServerError", "injected: the response was lost after the write")


# ---- idempotent transactions: token -> (when, request body)
_tokens = {}
_TOKEN_TTL = 600


def _transaction_replay(self):
    try:
        body = json.loads(self.body)
    except Exception:
        return None, None
    token = body.get("ClientRequestToken")
    if not token:
        return None, None
    now = time.time()
    for t in [t for t, (at, _) in _tokens.items() if now - at > _TOKEN_TTL]:
        del _tokens[t]
    seen = _tokens.get(token)
    if seen is None:
        return token, None
    if seen[1] != self.body:
        return token, _ddb_error(400, "IdempotentParameterMismatchException", "a different request with this token")
    return token, (200, {"Content-Type": "application/x-amz-json-1.0"}, "{}")


def _serialized_call(self):
    action = self._get_action()
    # moto replaces self.body with the parsed request while it handles it: keep the text.
    raw = self.body
    with _lock:
        token, replay = (None, None)
        if action == "TransactWriteItems":
            token, replay = _transaction_replay(self)
            if replay is not None:
                return replay
        kinds = ["throttle", "throughput", "500", "lost"]
        if action == "TransactWriteItems":
            kinds += ["conflict", "tx-throttle"]
        fault = _draw(kinds)
        if fault in ("conflict", "tx-throttle"):
            code = "TransactionConflict" if fault == "conflict" else "ThrottlingError"
            n = len(json.loads(self.body).get("TransactItems", []))
            reasons = [{"Code": "None"} for _ in range(n)]
            reasons[-1] = {"Code": code, "Message": f"injected: {code}"}
            return _ddb_error(
                400,
                "TransactionCanceledException",
                f"Transaction cancelled, please refer cancellation reasons for specific reasons [{code}]",
                {"CancellationReasons": reasons},
            )
        if fault == "throttle":
            return _ddb_error(400, "ThrottlingException", "injected: rate of requests exceeds the allowed throughput")
        if fault == "throughput":
            return _ddb_error(400, "ProvisionedThroughputExceededException", "injected: throughput exceeded")
        if fault == "500":
            return _ddb_error(500, "InternalServerError", "injected: internal server error")
        throttled, index_writes = _partition_admit(self, action, raw)
        if throttled is not None:
            return throttled
        out = _call_action(self)
        if out[0] == 200:
            _partition_charge(self, action, raw, out, index_writes)
        if token is not None and out[0] == 200:
            _tokens[token] = (time.time(), raw)
        if fault == "lost":
            return _lost(out)
        return out


# ---- partition budgets (see partitions.py): metered always, enforced when set

_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
_READS = {"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"}


def _partition_admit(self, action, raw):
    """(a refusal or None, the request's index writes: they are known only before it runs)."""
    if partitions.budgets is None or (action not in _WRITES and action not in _READS):
        return None, []
    try:
        body = json.loads(raw)
        backend = self.dynamodb_backend
        writes = partitions.writes_of(backend, action, body) if action in _WRITES else []
        index_writes = partitions.index_writes_of(backend, action, body) if action in _WRITES else []
        reads = partitions.read_keys_of(backend, action, body) if action in _READS else []
    except Exception:
        return None, []
    hot = partitions.admit(action, writes + [(k, u) for k, u, _ in index_writes], reads)
    if hot is None:
        return None, index_writes
    message = f"Throughput exceeds the current capacity of your table or index (partition {hot})"
    if action == "TransactWriteItems":
        # The item refused is the one whose table or index write found its key short.
        by_index = {i for k, _, i in index_writes if k == hot}
        reasons = [
            {"Code": "ThrottlingError", "Message": message} if k == hot or j in by_index else {"Code": "None"}
            for j, (k, _) in enumerate(writes)
        ]
        return _ddb_error(
            400,
            "TransactionCanceledException",
            "Transaction cancelled, please refer cancellation reasons for specific reasons [ThrottlingError]",
            {"CancellationReasons": reasons},
        ), []
    return _ddb_error(400, "ProvisionedThroughputExceededException", message), []


def _partition_charge(self, action, raw, out, index_writes):
    if partitions.budgets is None:
        return
    try:
        body = json.loads(raw)
        backend = self.dynamodb_backend
        if action in _WRITES:
            # Sizes after the write: an update that grew the item costs its new size.
            partitions.charge("wcu", partitions.writes_of(backend, action, body) + [(k, u) for k, u, _ in index_writes])
        elif action in _READS:
            partitions.charge("rcu", partitions.reads_of(backend, action, body, out[2]))
    except Exception:
        pass


DynamoHandler.call_action = _serialized_call

# ---- SQS: sends and deletes may fail, before or after they are applied

from moto.sqs.responses import SQSResponse  # noqa: E402

_sqs_call_action = SQSResponse.call_action
_SQS_FAULTY = {"SendMessage", "SendMessageBatch", "DeleteMessage", "DeleteMessageBatch"}


def _sqs_error():
    body = json.dumps({"__type": "com.amazonaws.sqs#InternalError", "message": "injected: internal error"})
    return 500, {"Content-Type": "application/x-amz-json-1.0", "status": 500}, body


def _faulty_sqs_call(self):
    if self._get_action() not in _SQS_FAULTY:
        return _sqs_call_action(self)
    fault = _draw(["sqs-500", "sqs-lost"])
    if fault == "sqs-500":
        return _sqs_error()
    out = _sqs_call_action(self)
    return _sqs_error() if fault == "sqs-lost" else out


SQSResponse.call_action = _faulty_sqs_call

_transact = ddb_models.DynamoDBBackend.transact_write_items


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
            current = self.get_item(op["TableName"], partitions.key_of(self, op_type, op))
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

# ---- GET /lineup-faults: what was injected so far

from moto.server import DomainDispatcherApplication  # noqa: E402

_get_application = DomainDispatcherApplication.get_application


def _with_faults_route(self, environ):
    if environ.get("PATH_INFO") == "/lineup-units":
        reset = "reset" in environ.get("QUERY_STRING", "")

        def units(env, start_response):
            body = partitions.report(reset).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        return units
    if environ.get("PATH_INFO") == "/lineup-faults":

        def app(env, start_response):
            with _fault_lock:
                body = json.dumps(injected).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        return app
    return _get_application(self, environ)


DomainDispatcherApplication.get_application = _with_faults_route

# ---- speed: moto_server as shipped spends most of its time around the requests

# It lists its own package directory (an isdir per service, ~200) on every request to
# route it; the list never changes while it runs.
import moto.backends as _backends  # noqa: E402

_modules = tuple(_backends.list_of_moto_modules())
_backends.list_of_moto_modules = lambda: _modules

# HTTP/1.0 means a connection, and a server thread, per request: keep connections
# alive as DynamoDB's and SQS's endpoints do.
from moto.moto_server.werkzeug_app import MotoRequestHandler  # noqa: E402

MotoRequestHandler.protocol_version = "HTTP/1.1"
# One log line per request costs time too: keep errors only.
MotoRequestHandler.log_request = lambda self, code="-", size="-": None

# SQS reads the clock through a datetime round trip, several times per message per
# receive, scanning the whole queue: the same instant, read directly.
import moto.sqs.models as _sqs_models  # noqa: E402

_unix_time = _sqs_models.unix_time


def _now(dt=None):
    return time.time() if dt is None else _unix_time(dt)


_sqs_models.unix_time = _now
_sqs_models.unix_time_millis = lambda dt=None: _now(dt) * 1000.0


# A receive checks each message's retention by computing every attribute of its queue
# (which counts the queue's messages three ways): read the one it needs.
def _retained(self, queue_name, message):
    retention = self.get_queue(queue_name).message_retention_period
    return int(retention) + message.sent_timestamp / 1000 > time.time()


_sqs_models.SQSBackend.is_message_valid_based_on_retention_period = _retained

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
