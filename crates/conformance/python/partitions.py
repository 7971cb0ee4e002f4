"""DynamoDB's per-partition throughput, metered and (optionally) enforced for moto.

Real DynamoDB serves at most 1,000 write units and 3,000 read units per second to one
partition, and a partition key value never spans partitions for writes when the table
has a local secondary index, so a hot key is a hard ceiling that moto never shows. This
module meters every DynamoDB request by the partition key value it touches, with
DynamoDB's rules (documented under "Read/write capacity units"):

- a write is 1 unit per started KB of the larger of the item before and after; in a
  TransactWriteItems every item (ConditionCheck included) costs twice that;
- a strongly consistent read is 1 unit per started 4 KB, an eventually consistent one
  half of that; a Query sums the sizes of the items it returns before rounding up; in a
  TransactGetItems each item costs twice;
- a global secondary index has partitions of its own (a Query on it is metered on the
  index's key); a local one shares the table's;
- a write that puts an item into a GSI, takes it out, or changes what it projects
  (every attribute for ALL; the keys, and an INCLUDE's listed attributes, otherwise)
  costs the index 1 unit per started KB of the projected entry on the index's key (2 writes when
  the item's index key moves: out of the old, into the new), and a GSI key over its
  budget refuses the table's write, as DynamoDB's index back-pressure does (writes_of
  with `index_writes_of`). Index writes are not doubled in a transaction and an
  update's new value is known only for plain `#a = :v` assignments (any other touch of
  an index key counts as a move). What is not modelled, so that a measured ceiling
  errs high, never low: Scan (metered on the table as a whole), and DynamoDB's burst
  and adaptive capacity.

With LINEUP_MOTO_PARTITIONS="wcu=50,rcu=150" each partition key value gets a token
bucket per kind, filled at that rate with one second's worth at most (the scaled-down
DynamoDB limits: 1,000 → 10 is 1/100). A request that finds any of its keys' buckets in
debt is refused as DynamoDB refuses it: ProvisionedThroughputExceededException (400,
nothing written; the SDK retries), or for a transaction TransactionCanceledException
with a ThrottlingError reason on the hot item; one admitted takes its whole cost, and
may leave a bucket in debt, which the next requests wait out. So a key's long-run rate
is its budget, whatever the requests' sizes. (Requiring the whole cost in the bucket
up front would not scale down: a pass placing 100 evals puts ~19 units on each of 16
index shards, 2% of a real key's second but over 7 seconds of a 1/400 key's, and would
wait for all of its keys' buckets to be full at once, a starvation real DynamoDB, whose
keys also keep 300 s of unused capacity, does not show.) With
LINEUP_MOTO_PARTITIONS="meter", requests are metered but never refused. In both, GET /lineup-units answers the units consumed
and the requests throttled per key since the last GET /lineup-units?reset=1. Unset,
nothing is metered (it costs moto time).
"""

import json
import math
import os
import re
import threading
import time

from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.utilities import bytesize

_lock = threading.Lock()
# partition -> {"wcu": float, "rcu": float, "throttled": int, "requests": int}
totals = {}
# (kind, key) -> [tokens, last refill time]
_buckets = {}


def _parse(spec):
    # "meter": no limits.
    conf = dict(kv.split("=", 1) for kv in spec.split(",") if "=" in kv)
    return {"wcu": float(conf.get("wcu", "inf")), "rcu": float(conf.get("rcu", "inf"))}


budgets = _parse(os.environ["LINEUP_MOTO_PARTITIONS"]) if os.environ.get("LINEUP_MOTO_PARTITIONS") else None


def item_size(attrs):
    """An item's size as DynamoDB counts it: attribute names plus values."""
    if not attrs:
        return 0
    return sum(bytesize(k) + DynamoType(v).size() for k, v in attrs.items())


def _stored_size(backend, table, key):
    try:
        item = backend.get_item(table, key)
    except Exception:
        return 0
    return item.size() if item is not None else 0


def _write_units(size, transactional):
    units = max(1, math.ceil(size / 1024))
    return 2 * units if transactional else units


def _read_units(size, consistent, transactional=False):
    units = max(1, math.ceil(size / 4096))
    if transactional:
        return 2.0 * units
    return float(units) if consistent else units / 2.0


def _pk(backend, table_name, key_or_item, index=None):
    """The partition a key or an item lives in: `table:value` (`table/index:value`)."""
    try:
        table = backend.get_table(table_name)
        attr = table.hash_key_attr
        where = table_name
        if index is not None:
            gsi = next((i for i in table.global_indexes if i.name == index), None)
            if gsi is not None:
                attr = next(k["AttributeName"] for k in gsi.schema if k["KeyType"] == "HASH")
                where = f"{table_name}/{index}"
        value = key_or_item.get(attr)
        return f"{where}:{json.dumps(value, sort_keys=True)}"
    except Exception:
        return f"{table_name}:?"


def _query_pk(backend, body):
    """The partition key value a Query's key condition names."""
    names = body.get("ExpressionAttributeNames") or {}
    values = body.get("ExpressionAttributeValues") or {}
    table_name, index = body.get("TableName"), body.get("IndexName")
    try:
        table = backend.get_table(table_name)
        attr = table.hash_key_attr
        gsi = next((i for i in table.global_indexes if i.name == index), None) if index else None
        if gsi is not None:
            attr = next(k["AttributeName"] for k in gsi.schema if k["KeyType"] == "HASH")
    except Exception:
        return f"{table_name}:?"
    for name, val in re.findall(r"(#?[A-Za-z0-9_]+)\s*=\s*(:[A-Za-z0-9_]+)", body.get("KeyConditionExpression", "")):
        if names.get(name, name) == attr:
            return _pk(backend, table_name, {attr: values.get(val)}, index)
    return f"{table_name}:?"


def writes_of(backend, action, body):
    """[(partition, write units)] a write request will consume, before it runs."""
    out = []
    if action == "PutItem":
        size = max(item_size(body.get("Item")), _stored_size(backend, body["TableName"], _put_key(backend, body)))
        out.append((_pk(backend, body["TableName"], body["Item"]), _write_units(size, False)))
    elif action in ("UpdateItem", "DeleteItem"):
        size = _stored_size(backend, body["TableName"], body["Key"])
        # An update may grow the item: count at least what it holds now, and 1 unit.
        out.append((_pk(backend, body["TableName"], body["Key"]), _write_units(size, False)))
    elif action == "BatchWriteItem":
        for table, reqs in (body.get("RequestItems") or {}).items():
            for r in reqs:
                if "PutRequest" in r:
                    item = r["PutRequest"]["Item"]
                    out.append((_pk(backend, table, item), _write_units(item_size(item), False)))
                elif "DeleteRequest" in r:
                    key = r["DeleteRequest"]["Key"]
                    out.append((_pk(backend, table, key), _write_units(_stored_size(backend, table, key), False)))
    elif action == "TransactWriteItems":
        for t in body.get("TransactItems") or []:
            op_type, op = next(iter(t.items()))
            if op_type == "Put":
                item = op["Item"]
                size = max(item_size(item), _stored_size(backend, op["TableName"], _put_key(backend, op)))
                out.append((_pk(backend, op["TableName"], item), _write_units(size, True)))
            else:
                size = _stored_size(backend, op["TableName"], op["Key"])
                out.append((_pk(backend, op["TableName"], op["Key"]), _write_units(size, True)))
    return out


def _stored_attrs(backend, table, key):
    """The item stored at `key` in wire form ({"S": ...} per attribute), or None."""
    try:
        item = backend.get_item(table, key)
    except Exception:
        return None
    if item is None:
        return None
    return {k: v.to_json() for k, v in item.attrs.items()}


_CLAUSE = re.compile(r"\b(SET|REMOVE|ADD|DELETE)\b", re.IGNORECASE)


def _after_update(old, op):
    """The item after an UpdateItem, as far as plain assignments tell, and the
    attributes touched in ways whose result is not worked out here (`#c = #c - :n`,
    ADD: taken as changed)."""
    names = op.get("ExpressionAttributeNames") or {}
    values = op.get("ExpressionAttributeValues") or {}
    new = dict(old or {})
    unknown = set()
    parts = _CLAUSE.split(op.get("UpdateExpression", ""))
    for verb, clause in zip(parts[1::2], parts[2::2]):
        verb = verb.upper()
        if verb == "SET":
            for name, rhs in re.findall(r"(#?[A-Za-z0-9_]+)\s*=\s*([^,=]+(?:\([^)]*\))?)", clause):
                attr = names.get(name, name)
                rhs = rhs.strip()
                if re.fullmatch(r":[A-Za-z0-9_]+", rhs) and rhs in values:
                    new[attr] = values[rhs]
                else:
                    unknown.add(attr)
                    new.setdefault(attr, {"NULL": True})
        elif verb == "REMOVE":
            for name in re.findall(r"#?[A-Za-z0-9_]+", clause):
                new.pop(names.get(name, name), None)
        else:
            for name in re.findall(r"(#?[A-Za-z0-9_]+)\s+:[A-Za-z0-9_]+", clause):
                attr = names.get(name, name)
                unknown.add(attr)
                new.setdefault(attr, {"NULL": True})
    return new, unknown


def index_writes_of(backend, action, body):
    """[(partition, write units, i)] a write request makes on global secondary indexes;
    `i` is the place of the item that makes it in a transaction (else 0)."""
    ops = []
    if action in ("PutItem", "UpdateItem", "DeleteItem"):
        ops.append((0, body["TableName"], action[:-4], body))
    elif action == "BatchWriteItem":
        for table, reqs in (body.get("RequestItems") or {}).items():
            for r in reqs:
                if "PutRequest" in r:
                    ops.append((0, table, "Put", {"Item": r["PutRequest"]["Item"]}))
                elif "DeleteRequest" in r:
                    ops.append((0, table, "Delete", {"Key": r["DeleteRequest"]["Key"]}))
    elif action == "TransactWriteItems":
        for i, t in enumerate(body.get("TransactItems") or []):
            op_type, op = next(iter(t.items()))
            if op_type in ("Put", "Update", "Delete"):
                ops.append((i, op["TableName"], op_type, op))
    out = []
    for i, table_name, kind, op in ops:
        try:
            table = backend.get_table(table_name)
            gsis = table.global_indexes or []
            if not gsis:
                continue
            key = op["Key"] if kind != "Put" else _put_key(backend, {"TableName": table_name, "Item": op["Item"]})
            old = _stored_attrs(backend, table_name, key)
            unknown = set()
            if kind == "Put":
                new = op["Item"]
            elif kind == "Delete":
                new = None
            else:
                new, unknown = _after_update(old, op)
        except Exception:
            continue
        for gsi in gsis:
            attrs = [k["AttributeName"] for k in gsi.schema]
            hash_attr = next(k["AttributeName"] for k in gsi.schema if k["KeyType"] == "HASH")
            projected = _projected(table, gsi)

            def at(item):
                return f"{table_name}/{gsi.name}:{json.dumps(item.get(hash_attr), sort_keys=True)}"

            def indexed(item):
                return item is not None and all(a in item for a in attrs)

            def view(item):
                if projected is None:
                    return item
                return {k: v for k, v in item.items() if k in projected}

            def units(item):
                return _write_units(item_size(view(item)), False)

            if indexed(old) and indexed(new):
                moved = any(a in unknown for a in attrs) or any(old.get(a) != new.get(a) for a in attrs)
                # DynamoDB writes an index entry only when something it projects
                # changes: an update of attributes a KEYS_ONLY or INCLUDE index leaves
                # out costs that index nothing.
                touched = any(projected is None or a in projected for a in unknown)
                if moved:
                    out += [(at(old), units(old), i), (at(new), units(new), i)]
                elif view(old) != view(new) or touched or kind == "Put":
                    out.append((at(new), units(new), i))
            elif indexed(old):
                out.append((at(old), units(old), i))
            elif indexed(new):
                out.append((at(new), units(new), i))
    return out


def _projected(table, gsi):
    """The attributes `gsi` holds, or None for all of them."""
    projection = gsi.projection or {}
    kind = projection.get("ProjectionType", "ALL")
    if kind == "ALL":
        return None
    keys = {table.hash_key_attr} | {k["AttributeName"] for k in gsi.schema}
    if table.range_key_attr is not None:
        keys.add(table.range_key_attr)
    if kind == "INCLUDE":
        keys |= set(projection.get("NonKeyAttributes") or [])
    return keys


def key_of(backend, op_type, op):
    """The key of the item a write targets: its `Key`, or a Put's item's key attributes."""
    if op_type != "Put":
        return op["Key"]
    table = backend.get_table(op["TableName"])
    attrs = op["Item"]
    key = {table.hash_key_attr: attrs[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attrs[table.range_key_attr]
    return key


def _put_key(backend, op):
    try:
        return key_of(backend, "Put", op)
    except Exception:
        return {}


def reads_of(backend, action, body, response_text):
    """[(partition, read units)] a read request consumed, from its response."""
    out = []
    try:
        resp = json.loads(response_text) if response_text else {}
    except Exception:
        resp = {}
    consistent = bool(body.get("ConsistentRead"))
    if action == "GetItem":
        size = item_size(resp.get("Item"))
        out.append((_pk(backend, body["TableName"], body["Key"]), _read_units(size, consistent)))
    elif action == "Query":
        size = sum(item_size(i) for i in resp.get("Items") or [])
        out.append((_query_pk(backend, body), _read_units(size, consistent)))
    elif action == "Scan":
        size = sum(item_size(i) for i in resp.get("Items") or [])
        out.append((f"{body.get('TableName')}:*", _read_units(size, consistent)))
    elif action == "BatchGetItem":
        for table, got in (resp.get("Responses") or {}).items():
            wanted = (body.get("RequestItems") or {}).get(table, {})
            for item in got:
                out.append((_pk(backend, table, item), _read_units(item_size(item), wanted.get("ConsistentRead", False))))
    elif action == "TransactGetItems":
        for t, r in zip(body.get("TransactItems") or [], resp.get("Responses") or []):
            op = t.get("Get", {})
            out.append((_pk(backend, op.get("TableName"), op.get("Key", {})), _read_units(item_size(r.get("Item")), True, True)))
    return out


def _refill(kind, key, now):
    rate = budgets[kind]
    b = _buckets.setdefault((kind, key), [rate, now])
    b[0] = min(rate, b[0] + (now - b[1]) * rate)
    b[1] = now
    return b


def admit(action, writes, read_keys):
    """The first partition that cannot take this request now, or None: one whose
    bucket is in debt (see the module's note; a read's size is known only afterwards,
    and both are charged then)."""
    if budgets is None:
        return None
    now = time.monotonic()
    with _lock:
        for key, _units in writes:
            if _refill("wcu", key, now)[0] <= 0:
                _throttled(key)
                return key
        for key in read_keys:
            if _refill("rcu", key, now)[0] <= 0:
                _throttled(key)
                return key
    return None


def _entry(key):
    return totals.setdefault(key, {"wcu": 0.0, "rcu": 0.0, "throttled": 0, "requests": 0})


def _throttled(key):
    _entry(key)["throttled"] += 1


def charge(kind, consumed):
    """Records what a request that ran consumed, and takes it from the buckets."""
    now = time.monotonic()
    with _lock:
        for key, units in consumed:
            e = _entry(key)
            e[kind] += units
            e["requests"] += 1
            if budgets is not None:
                _refill(kind, key, now)[0] -= units


def read_keys_of(backend, action, body):
    """The partitions a read request will touch, known before it runs."""
    if action == "GetItem":
        return [_pk(backend, body["TableName"], body["Key"])]
    if action == "Query":
        return [_query_pk(backend, body)]
    if action == "TransactGetItems":
        return [_pk(backend, t["Get"]["TableName"], t["Get"]["Key"]) for t in body.get("TransactItems") or [] if "Get" in t]
    if action == "BatchGetItem":
        return [_pk(backend, table, k) for table, r in (body.get("RequestItems") or {}).items() for k in r.get("Keys", [])]
    return []


def report(reset):
    with _lock:
        shown = {k: (v if math.isfinite(v) else None) for k, v in (budgets or {}).items()}
        body = json.dumps({"budgets": shown, "partitions": totals})
        if reset:
            totals.clear()
    return body
