"""``redis://`` and ``rediss://``: records as JSON documents under predictable keys.

URL: ``redis://[[user]:password@]host:6379/0`` (``rediss://`` for TLS). Query options:

* ``prefix`` (default ``pydantic_toast``): keys are ``<prefix>:<class_name>:<uuid>``;
* ``max_connections`` (default 50) and ``pool_timeout`` (seconds, default 10): the pool waits
  this long for a free connection when all are busy, instead of failing;
* ``socket_timeout`` (default 10) and ``socket_connect_timeout`` (default 5), in seconds;
* ``batch_size`` (default 100): records per server call when a batch is saved or loaded (a
  script call blocks the server: 100 records take it a few milliseconds);
* ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
  (``none``/``optional``/``required``) for ``rediss://``.

Each value is one JSON document,
``{"created_at", "revision", "schema_version", "updated_at", "data"}``, ``data`` holding the
model's fields. A save is a server-side script: it checks the revision each record expects
(all of a batch before writing any), keeps ``created_at`` of an existing record (no
read-modify-write race between writers), increments the revision and sets the rest; a
document above 8 KB is staged by a plain SET in the same round trip and moved into place, so
the server's time per save does not grow with the document (see ``_SAVE_SCRIPT``). Above
1 MiB, the staged copy is written in 1 MiB pieces (SETRANGE) before the script runs, and a
load reads such a document in pieces (GETRANGE) after its first MiB: a 100 MB record costs
the client about twice its size in memory, not four or five times. A record's first save
without a TTL (up to 1 MiB) is a transaction instead, ``SET NX`` and ``ZADD NX`` (see
``_MULTI``), and so is each chunk of a batch of such first saves (see ``_INSERT_WINDOW``).
With a model ``ttl``, every write sets the expiry afresh (a record expires ``ttl`` seconds
after its last write); without one, a write makes the record permanent.
``<prefix>:<class_name>:index`` is a sorted set of the class's ids by creation time, for
listing and counting (a page is one script call that walks the index from the cursor and reads
the documents);
``<prefix>:<class_name>:expiry`` scores the records that expire by their expiry time, so that
``count()`` is the index's size less the expired entries (exact, without reading records).
Reads never write: entries of expired records are swept from both sets by later writes of the
class (at most 100 per write), and listing skips them meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from pydantic_toast._collector import paused_for
from pydantic_toast._exceptions import (
    ConcurrencyError,
    StorageConfigurationError,
    StorageOperationError,
    StorageUsageError,
    StoredDataError,
    shorten,
)
from pydantic_toast._records import ClassKeys, PageCursor, RecordKey, StoredRecord, read_record
from pydantic_toast._url import StorageURL, rewrite_url
from pydantic_toast.backends import _resp
from pydantic_toast.backends._resp import command
from pydantic_toast.backends.base import Capability, RecordBackend, batch_size_of, batch_spans
from pydantic_toast.runtime.boundary import connecting

__all__ = ["RedisBackend"]

_NUMBERS = {
    "max_connections": 50,
    "pool_timeout": 10.0,
    "socket_timeout": 10.0,
    "socket_connect_timeout": 5.0,
}
_SSL = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_OPTIONS = {"prefix", "batch_size", *_NUMBERS, *_SSL}

# The head of a stored record, and the comparison of created_at, shared by every script that
# checks a record (the save, check and checked-delete scripts here, the prepare script of
# redis_cluster.py), so that the document's format is parsed in one place.
# stored_head(key): the stored revision (nil: no record; 1: a document written before
# revisions) and created_at text (nil: a head without one, which any created_at matches), cut
# from the document's first bytes (GETRANGE): the data is never decoded, copied or re-encoded.
# same_instant(a, b): whether two created_at texts name one instant. The library's own
# spelling matches as text; another tool's (`Z` or another offset for `+00:00`, fewer fraction
# digits, a space for `T`) is compared as an instant: seconds and microseconds (digits past
# six dropped, as Python reads them), a text without offset only with one without offset. A
# text it cannot read matches only itself.
_HEAD = """
local function stored_head(key)
  local head = redis.call('GETRANGE', key, 0, 127)
  if head == '' then
    return nil, nil
  end
  local created, revision = string.match(head, '^{"created_at":"([^"]*)","revision":(%d+) *,')
  if created then
    return tonumber(revision), created
  end
  return 1, string.match(head, '^{"created_at":"([^"]*)"')
end
local function instant(text)
  local y, mo, d, h, mi, s, rest = string.match(
    text, '^(%d%d%d%d)-(%d%d)-(%d%d)[T ](%d%d):(%d%d):(%d%d)(.*)$')
  if not y then
    return nil
  end
  y, mo, d, h, mi, s = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi),
    tonumber(s)
  if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or s > 59 then
    return nil
  end
  local micro = 0
  local fraction = string.match(rest, '^[.,](%d+)')
  if fraction then
    micro = tonumber(string.sub(fraction .. '00000', 1, 6))
    rest = string.sub(rest, #fraction + 2)
  end
  local offset = nil
  if rest == 'Z' then
    offset = 0
  elseif rest ~= '' then
    local sign, hours, minutes = string.match(rest, '^([+-])(%d%d):?(%d%d)$')
    if not sign then
      sign, hours = string.match(rest, '^([+-])(%d%d)$')
      minutes = '00'
    end
    if not sign then
      return nil
    end
    offset = (tonumber(hours) * 60 + tonumber(minutes)) * 60
    if sign == '-' then
      offset = -offset
    end
  end
  -- days since a fixed day (0000-03-01), from the proleptic Gregorian calendar
  if mo <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local of_era = y - era * 400
  local of_year = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  local days = era * 146097 + of_era * 365 + math.floor(of_era / 4) - math.floor(of_era / 100)
    + of_year
  return days * 86400 + h * 3600 + mi * 60 + s - (offset or 0), micro, offset ~= nil
end
local function same_instant(a, b)
  if a == b then
    return true
  end
  local seconds, micro, aware = instant(a)
  local other_seconds, other_micro, other_aware = instant(b)
  return seconds ~= nil and seconds == other_seconds and micro == other_micro
    and aware == other_aware
end
"""
# KEYS: record keys, then the class index keys, the class expiry keys and the staged keys (same
# order; a record's own key again when it is not staged). ARGV, 5 per record: the document
# after created_at and revision (starting with ','; empty when staged), its created_at, its
# creation score, its TTL in milliseconds (0: none) and the revision it expects ('': any). The
# id is the record key's last 36 characters (every key layout ends with it).
# Every expected revision is checked before anything is written (a script runs atomically),
# so a batch is all or nothing; a document without a revision (written before revisions
# existed) is at revision 1. An existing record must also have the created_at the record
# carries: one deleted and created again since it was read (by a write regardless, which
# carries a new created_at) is another record, whatever its revision. The old document is
# never read whole: created_at and revision are cut from its first bytes (GETRANGE), so the
# data is never decoded, copied or re-encoded by Lua.
#
# A small document travels in ARGV and is written by SET. A large one would cost the server
# about 4 µs per KB in Lua (argument, concatenation, SET): the client stages it whole under
# its own key in the same round trip (a plain SET, with a short expiry in case the script
# never runs), and the script moves it into place (RENAME, O(1)) and writes the header over
# its first STAGED_HEADER bytes (SETRANGE, in place), padded with spaces before the comma
# that follows the revision. The expiry set scores each TTL record by when it expires (server
# time, the clock Redis expires keys by), so count() subtracts the expired ones without
# reading a record. Expired entries leave both sets here, a few per write (never on a read);
# a class whose expiry set does not exist (no TTL record) costs one EXISTS instead (no TIME,
# no sweep: there is nothing to remove).
# The script is sent once: neither the library nor, on a cluster, redis-py's client ever
# resends it (a write that may have left is settled by reading back, runtime/outcomes.py). So
# a record found at a revision other than the one expected is always a conflict, even holding
# exactly the document this call carries: another writer who read the same revision and wrote
# the same data in the same microsecond (a counter incremented by two processes) wrote it, and
# taking it for this write would lose an update.
# Returns {1, new revisions...} or {0, index, current revision (0: none)}.
_STAGED_HEADER = 96
# The ids of expired entries (``gone``, taken from an expiry set) whose index entry goes too:
# all but a live record without expiry (PTTL -1), which keeps its entry. Such a record's id is
# in the expiry set only when a first save over an expired record of that id landed and its
# second step (_SETTLE_INSERT_SCRIPT) never ran (its reply lost, or cancelled): without this,
# the sweep would drop the live record from the index (no longer listed nor counted). Its
# record key is the index key less "index", plus the id (every key layout).
_SWEPT = """
local function swept(index, gone)
  local prefix = string.sub(index, 1, -6)
  local dead = {}
  for _, id in ipairs(gone) do
    if redis.call('PTTL', prefix .. id) ~= -1 then dead[#dead + 1] = id end
  end
  return dead
end
"""
_SAVE_SCRIPT = (
    _HEAD
    + _SWEPT
    + """
local n = #KEYS / 4
local STAGED_HEADER = 96
local createds = {}
local existed = {}
local result = {1}
for i = 1, n do
  local base = (i - 1) * 5
  local expected = ARGV[base + 5]
  local found, stored = stored_head(KEYS[i])
  local current = found or 0
  local created = stored or ARGV[base + 2]
  existed[i] = found ~= nil
  if expected ~= '' and (tonumber(expected) ~= current
      or (current > 0 and not same_instant(created, ARGV[base + 2]))) then
    for j = 1, n do
      if ARGV[(j - 1) * 5 + 1] == '' then redis.call('DEL', KEYS[3 * n + j]) end
    end
    return {0, i, current}
  end
  if ARGV[base + 1] == '' then
    if redis.call('EXISTS', KEYS[3 * n + i]) == 0 then
      return redis.error_reply('pydantic-toast: a staged document is missing (expired?)')
    end
    if 15 + #created + 13 + 20 > STAGED_HEADER then
      return redis.error_reply('pydantic-toast: created_at too long for the staged header')
    end
  end
  createds[i] = created
  result[i + 1] = current + 1
end
local now = nil
local sweep = {}
for i = 1, n do
  local base = (i - 1) * 5
  local key = KEYS[i]
  local ttl = tonumber(ARGV[base + 4])
  local id = string.sub(key, -36)
  if not existed[i] then
    redis.call('ZADD', KEYS[n + i], ARGV[base + 3], id)
  end
  local header = '{"created_at":"' .. createds[i] .. '","revision":' ..
    string.format('%d', result[i + 1])
  if ARGV[base + 1] == '' then
    redis.call('RENAME', KEYS[3 * n + i], key)
    redis.call('SETRANGE', key, 0, header .. string.rep(' ', STAGED_HEADER - #header))
    if ttl > 0 then
      redis.call('PEXPIRE', key, ttl)
    else
      redis.call('PERSIST', key)
    end
  elseif ttl > 0 then
    redis.call('SET', key, header .. ARGV[base + 1], 'PX', ttl)
  else
    redis.call('SET', key, header .. ARGV[base + 1])
  end
  local expiry = KEYS[2 * n + i]
  if ttl > 0 then
    if not now then
      local clock = redis.call('TIME')
      now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    end
    redis.call('ZADD', expiry, now + ttl, id)
    sweep[expiry] = KEYS[n + i]
  elseif sweep[expiry] == nil then
    if redis.call('EXISTS', expiry) == 1 then
      redis.call('ZREM', expiry, id)
      sweep[expiry] = KEYS[n + i]
    else
      sweep[expiry] = false
    end
  elseif sweep[expiry] then
    redis.call('ZREM', expiry, id)
  end
end
for i = 1, n do
  local expiry = KEYS[2 * n + i]
  local index = sweep[expiry]
  if index then
    sweep[expiry] = false
    if not now then
      local clock = redis.call('TIME')
      now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    end
    local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', '(' .. now, 'LIMIT', 0, 100)
    if #gone > 0 then
      redis.call('ZREM', expiry, unpack(gone))
      local dead = swept(index, gone)
      if #dead > 0 then redis.call('ZREM', index, unpack(dead)) end
    end
  end
end
return result
"""
)
# A record's first save (it expects no record: revision 0) without a TTL skips the save
# script: MULTI, SET NX of the whole document at revision 1, ZADD NX of its index entry,
# EXISTS of its class's expiry set, EXEC, in one write. A transaction runs whole, nothing
# else in between; it costs the server 11-14 µs against the script's 32 at 10 fields (no
# Lua, and a document above 8 KB goes straight into SET, its data written as it is, not
# staged; one above _PIECE takes the script, staged in pieces, so that the client never holds
# it twice). SET NX refusing means a record with this id exists: ZADD NX left that record's
# index entry as it was, nothing visible changed, and the save script runs instead (it
# answers the conflict).
# Two states the script would have put right are left to _SETTLE_INSERT_SCRIPT, in a second
# round trip: an index entry already there (ZADD NX added nothing: an earlier record of this
# id expired or was evicted, its entry not yet swept), and an expiry set in the class (a
# class that had a TTL before: this id may be in it, and a write sweeps it). A fresh id
# meets neither. Not atomic with the first: a second step that never runs (its save's reply
# lost, or cancelled) leaves the index entry's old score, or the id in the expiry set, where
# the sweep keeps the live record's index entry (see _SWEPT) and count() misses it until
# the sweep takes the id out. The old score is the new one for every save a model makes: an
# id is a model's own, and every record of it carries the created_at the model was given
# with the id (a first save repeated after a lost reply, a record that expired, saved
# again); only a record written through the backend with a reused id and another created_at
# can be listed at its old creation time then. A transaction cannot tell a stale entry from
# a taken id's (overwriting it would change a conflicting record's entry); a script can,
# at twice the server time of every first save.
_INSERTED_HEAD = b'{"created_at":"%b","revision":1,"schema_version":%d,"updated_at":"%b","data":'
# A revision-checked save of one record of up to 8 KB without a TTL, in a class without an
# expiry set, first tries this script: the save script's work for that case, without its
# batch bookkeeping (about half its server time). KEYS: the record, its class's expiry set.
# ARGV: the created_at the client holds, the revision it expects, the document at that
# revision plus one. Writes only when the stored document starts with exactly that created_at
# and revision (so created_at is kept) and the class has no expiry set (nothing to sweep, no
# entry to drop); returns 1 then, else 0 with nothing written, and the save script runs (a
# conflict, a document without a revision, created_at spelt otherwise by another tool, an
# expiry set). It parses the head itself, not through _HEAD: the hottest write path, and it
# needs only an exact match.
_UPDATED_HEAD = b'{"created_at":"%b","revision":%d,"schema_version":%d,"updated_at":"'
_UPDATE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local head = redis.call('GETRANGE', KEYS[1], 0, 127)
local created, revision = string.match(head, '^{"created_at":"([^"]*)","revision":(%d+) *,')
if created ~= ARGV[1] or revision ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"""
# A batch of first saves without TTL (a record's own, or a dump of several new models) is
# checked first, in one round trip: EXISTS of its record keys (batch_size per command) and
# of each class's expiry set. Any found: nothing is written, the save script runs (a
# conflict, or a class with an expiry set to sweep). Else each chunk
# of batch_size records is one transaction, SET NX of each document and one ZADD NX per class
# (then EXISTS of its expiry set), the chunks sent one after another on one connection
# without waiting for each reply (_INSERT_WINDOW transactions unanswered): about 4 µs of
# server time per record at 10 fields where the save script took 10-30, and no Lua copy of
# the document (the script's cost grows with it: 0.8-1.3 ms per 100 KB record). A record
# created by another writer between the check and its transaction (SET NX refused) goes to
# the save script; the rest of the batch is written (the ConcurrencyError lists it in its
# ``written``). An index entry already there or an expiry set that appeared meanwhile is put
# right as after a single first save (_SETTLE_INSERT_SCRIPT).
_INSERT_WINDOW = 8
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"
# KEYS: the record, its class index, its expiry set. ARGV: the id, its creation score, its
# created_at. After a transactional insert: if the record is still the one it wrote (same
# created_at), its index entry gets its score and, the record having no expiry, it leaves the
# expiry set; then the expiry set's expired entries are swept (at most 100), as the save
# script does after every write.
_SETTLE_INSERT_SCRIPT = (
    _SWEPT
    + """
local head = redis.call('GETRANGE', KEYS[1], 0, 127)
if string.match(head, '^{"created_at":"([^"]*)"') == ARGV[3] then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  if redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('ZREM', KEYS[3], ARGV[1])
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', KEYS[3], unpack(gone))
  local dead = swept(KEYS[2], gone)
  if #dead > 0 then redis.call('ZREM', KEYS[2], unpack(dead)) end
end
return 1
"""
)
# KEYS: record keys. ARGV, 2 per record: the revision it expects ('': any) and its created_at.
# The first record whose stored revision (or created_at) differs, as the save script finds
# it, without writing anything: a batch larger than batch_size is checked whole with this
# before its chunks are written.
# Returns {1} or {0, index, current revision (0: none)}.
_CHECK_SCRIPT = (
    _HEAD
    + """
for i = 1, #KEYS do
  local found, stored = stored_head(KEYS[i])
  local current = found or 0
  local expected = ARGV[2 * i - 1]
  if expected ~= '' and (tonumber(expected) ~= current
      or (current > 0 and stored and not same_instant(stored, ARGV[2 * i]))) then
    return {0, i, current}
  end
end
return {1}
"""
)
# KEYS: the record, its class index, its expiry set. ARGV: the id, the revision the caller
# read and the created_at it read ('': unknown, the revision alone decides). Deletes the record
# and its index entries only if it is at that revision and, as in the save script, has that
# created_at (one deleted and created again since is another record). Returns the revision
# found (0: no record) and 1 if the record was deleted, else 0.
_DELETE_CHECKED_SCRIPT = (
    _HEAD
    + """
local found, stored = stored_head(KEYS[1])
if not found then
  return {0, 0}
end
if found ~= tonumber(ARGV[2])
    or (ARGV[3] ~= '' and stored and not same_instant(stored, ARGV[3])) then
  return {found, 0}
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return {found, 1}
"""
)
# A UUID whose text stands for any id in a key (the last 36 characters of every key layout).
_NIL = UUID(int=0)
# Classes whose keys a backend keeps packed (see RedisBackend._class_keys).
_NAMED = 1024
# Documents larger than this are staged (see above); smaller ones cost the server less in ARGV
# than the extra command, and the client less than a pipeline.
_STAGE_ABOVE = 8192
# Records per script call in a batch: a script blocks the server while it runs; 100 records
# take it a median 0.7 ms (10 fields) to 1.3 ms (100 fields), 1,000 records up to 47-181 ms.
_BATCH_SIZE = 100
# Bytes of documents one save script call carries in its arguments (besides batch_size
# records): Lua copies each one (into ARGV, the header joined to it, SET), so a call's time
# grows with them. Redis Cluster (documents up to 1 MiB in ARGV), 300 records of 100 KB: 18.0
# ms per script call in chunks of 100 records, 1.3 ms in chunks of 1 MiB (INFO commandstats).
# A staged document weighs nothing: its own SET carries it, the script moves it in O(1). A
# transaction of first saves (see _INSERT_WINDOW) copies nothing: 100 of 100 KB, 0.25 ms.
_CHUNK_BYTES = 1 << 20
# A staged document left behind (its script never ran) expires after this many milliseconds.
_STAGED_PX = b"60000"
# Documents above this travel in pieces of this size (see _Staging and _load_in_pieces): whole,
# a 100 MB document cost the client 4.9x its size to save (the document, its SET, the write
# joined, the transport's buffer) and 3.0x to load (the stream buffer, its copy, the reply).
_PIECE = 1 << 20
# Pieces sent before their replies are awaited: writes (replies of a few bytes) and reads (a
# piece each, held meanwhile in the server's reply buffer and the client's stream buffer).
_WRITE_WINDOW = 16
_READ_WINDOW = 4
# The first piece of a load: GETRANGE <key> 0 _PIECE-1; a shorter reply is the whole document.
_FIRST_PIECE = b"$1\r\n0\r\n$%d\r\n%d\r\n" % (len(b"%d" % (_PIECE - 1)), _PIECE - 1)
# KEYS: the class index, its expiry set. The index's size less the entries already expired
# (a key is gone once the server's time passes its expiry): O(log n), and exact.
_COUNT_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
return redis.call('ZCARD', KEYS[1]) - redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. now)
"""
# KEYS: the class index. ARGV: the prefix of the class's record keys, the page size, the
# cursor's score ('' for the first page) and id, and the largest document returned whole (''
# for any size: a larger one comes as its first that many bytes, the client reads the rest in
# pieces, see RedisBackend._page). A page newest first: entries by score
# descending, then member descending (ZREVRANGEBYSCORE's order for equal scores, and the
# canonical UUID text sorts like the id), from the cursor's score down, skipping the cursor's
# own score at members not below its id; each round reads its entries' documents with one
# MGET and keeps the live ones. An entry whose record has expired is skipped, not removed
# (reads never write). Returns {id, document, id, document, ...}.
_PAGE_SCRIPT = """
local index, prefix, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local top, after, whole = '+inf', ARGV[4], tonumber(ARGV[5])
local cursor = nil
if ARGV[3] ~= '' then
  top = ARGV[3]
  cursor = tonumber(ARGV[3])
end
local found, page, offset = 0, {}, 0
while found < limit do
  local want = math.min(limit - found, 1000)  -- MGET's keys go through unpack: bounded
  local entries = redis.call(
    'ZREVRANGEBYSCORE', index, top, '-inf', 'WITHSCORES', 'LIMIT', offset, want)
  if #entries == 0 then break end
  offset = offset + #entries / 2
  local ids, keys = {}, {}
  for i = 1, #entries, 2 do
    local member = entries[i]
    if cursor == nil or tonumber(entries[i + 1]) < cursor or member < after then
      ids[#ids + 1] = member
      keys[#keys + 1] = prefix .. member
    end
  end
  if #keys > 0 then
    local documents = redis.call('MGET', unpack(keys))
    for i = 1, #keys do
      local document = documents[i]
      if document and found < limit then
        if whole and #document > whole then document = string.sub(document, 1, whole) end
        page[#page + 1] = ids[i]
        page[#page + 1] = document
        found = found + 1
      end
    end
  end
  if #entries / 2 < want then break end
end
return page
"""
_from_iso = datetime.fromisoformat
# A document's header, matched from its first byte (``match``; a "^" would cost a third of
# the match: 560 against 360 ns). Possessive, as nothing it matches is given back: it keeps
# no backtracking state, a quarter less per match.
_DOCUMENT = re.compile(
    rb'\{"created_at":"([^"]++)",(?:"revision":(\d++) *+,)?+"schema_version":(\d++),'
    rb'"updated_at":"([^"]++)","data":'
)


class _WaitingPool(aioredis.BlockingConnectionPool):
    """redis-py's waiting pool (``max_connections``, ``timeout``: the URL's ``pool_timeout``)
    with a checkout and a release of its own, its checkout errors marked as raised while
    connecting (nothing was sent): the boundary may then retry a write, which it never does
    once a request may have left.

    redis-py's checkout takes the pool's condition lock, starts a timeout, waits for a
    predicate, records metrics and checks the connection through its retry wrapper; its
    release takes two locks and dispatches an event. With 100 tasks saving on 50
    connections most checkouts wait, and a save cost the client 97 µs of CPU through that
    path, 74 here (``bench/redis_concurrent_cpu.py``). And it can leave a waiter asleep while
    a connection is idle: asyncio's ``Condition`` (before Python 3.13) drops a wakeup whose
    waiter is cancelled before it runs, and a release cancelled while it waits for the lock
    wakes nobody.

    Here a checkout takes an idle connection (or opens one, below ``max_connections``) at
    once while nobody waits; otherwise it queues a future and waits for it. A release hands
    its connection to the first waiter still waiting, or puts it back, without awaiting
    anything, so no cancellation can stop it half-way; a waiter cancelled once its future
    holds a connection hands that connection on the same way. Waiters are served first come,
    first served; one that waits ``timeout`` seconds fails as redis-py's does. A connection
    is checked as it is taken: not connected, marked for reconnection, or with unread data or
    closed by the server, it is connected afresh. redis-py's connection
    metrics (when enabled) count none of these checkouts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._doubtful: set[Any] = set()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connection from the pool, waiting up to ``timeout`` for one; its errors marked
        as connecting (nothing was sent)."""
        connection = None if self._waiters else self._free()
        try:
            if connection is None:
                connection = await self._wait()
            await self._check(connection)
        except BaseException as exc:
            if connection is not None:
                # Its handshake may have been cut short (no AUTH, no SELECT yet): the next
                # checkout connects it afresh.
                self._doubtful.add(connection)
                self._hand_on(connection)
            if isinstance(exc, Exception):
                connecting(exc)
            raise
        return connection

    async def _check(self, connection: Any) -> None:
        """Make ``connection``, just taken, ready to send a command, as redis-py does."""
        should_reconnect = getattr(connection, "should_reconnect", None)  # redis-py 6+
        if connection in self._doubtful or (should_reconnect is not None and should_reconnect()):
            self._doubtful.discard(connection)
            await connection.disconnect()
        if getattr(connection, "_re_auth_token", None) is not None:  # as redis-py's release
            await connection.re_auth()
        # Unread data, or closed by the server (CLIENT KILL, a restart): redis-py's own check
        # keeps such a connection while maintenance notifications may come (redis-py 8's
        # default, "auto"), and the command sent on it would read the server's close.
        if connection.is_connected and (self._elsewhere(connection) or await connection.can_read()):
            await connection.disconnect()
        if not connection.is_connected:
            await self.ensure_connection(connection)

    def _elsewhere(self, connection: Any) -> bool:
        """Whether ``connection`` is open on a node it must not be used on (never, here)."""
        return False

    async def release(self, connection: Any) -> None:
        """Give ``connection`` to the first waiter, or back to the pool."""
        self._hand_on(connection)

    def _free(self) -> Any:
        """An idle connection, or a new one below ``max_connections``, taken out of the pool;
        ``None`` when there is none."""
        if self._available_connections:
            connection = self._available_connections.pop()
        elif len(self._in_use_connections) < self.max_connections:
            connection = self.make_connection()  # type: ignore[no-untyped-call]
        else:
            return None
        self._in_use_connections.add(connection)
        return connection

    async def _wait(self) -> Any:
        """The connection a release hands this checkout, queued behind the waiters before."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if self.timeout is not None:
            timer = loop.call_later(self.timeout, self._expire, waiter)
        try:
            return await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            elif waiter.exception() is None:  # handed a connection, then cancelled
                self._hand_on(waiter.result())
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, waiter: asyncio.Future[Any]) -> None:
        """Fail ``waiter``, which waited ``timeout`` seconds, as redis-py's pool fails."""
        if not waiter.done():
            self._waiters.remove(waiter)
            waiter.set_exception(RedisConnectionError("No connection available."))

    def _hand_on(self, connection: Any) -> None:
        """Give ``connection`` to the first waiter still waiting, or back to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


class RedisBackend(RecordBackend):
    """Records in Redis, one JSON document per key, written atomically by a server script."""

    capabilities = frozenset(Capability)
    # Documents above this are staged under their own key (by a SET in the same round trip,
    # or in pieces above _PIECE) and moved into place by the save script.
    _stage_above = _STAGE_ABOVE
    # A single save without TTL skips the save script when it can (see _MULTI, _UPDATE_SCRIPT).
    _inserts_directly = True

    @classmethod
    def store_identity(cls, url: StorageURL) -> Hashable:
        """Host, port, database number and key prefix."""
        prefix = _options(url)[0]
        return (
            (url.host or "localhost").lower(),
            url.port or 6379,
            url.path.strip("/") or "0",
            prefix,
        )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._parsed = StorageURL.parse(url)
        self._prefix, self._pool_options = _options(self._parsed)
        self._client: aioredis.Redis | None = None
        self._save_script = _resp.Script(_SAVE_SCRIPT)
        self._check_script: Any = None
        self._batch_size = batch_size_of(self._parsed, _BATCH_SIZE)
        self._count_script: Any = None
        self._page_script: Any = None
        self._delete_checked_script: Any = None
        self._settle_insert_script: Any = None
        self._update_script = _resp.Script(_UPDATE_SCRIPT)
        self._named: dict[str, _ClassKeys] = {}

    @classmethod
    def check_url(cls, url: StorageURL) -> None:
        """Check the options without connecting."""
        _options(url)

    def key(self, class_name: str, id: UUID) -> str:
        """The key a record is stored under: ``<prefix>:<class_name>:<uuid>``."""
        return f"{self._prefix}:{class_name}:{id}"

    def _start_of_keys(self, class_name: str) -> str:
        """``<prefix>:<class_name>:``, the start of every record key of ``class_name``: the
        key of any id less the id (every key layout ends with it). Only where that start is
        the same for every id: Redis Cluster's depends on the id's bucket, and its batch
        load and writes build their keys with ``key``, its page with its bucket's hash tag."""
        return self.key(class_name, _NIL)[:-36]

    def index_key(self, class_name: str) -> str:
        """The sorted set of a class's ids by creation time."""
        return f"{self._prefix}:{class_name}:index"

    def expiry_key(self, class_name: str) -> str:
        """The sorted set of a class's records that expire, by expiry time (ms)."""
        return f"{self._prefix}:{class_name}:expiry"

    def _index_key_of(self, record: StoredRecord) -> str:
        """The index key a save of ``record`` adds its id to (one per class here)."""
        return self.index_key(record.class_name)

    def _expiry_key_of(self, record: StoredRecord) -> str:
        """The expiry set a save of ``record`` touches (one per class here)."""
        return self.expiry_key(record.class_name)

    def reply_timeout(self) -> float:
        """The URL's ``socket_timeout``."""
        return float(self._pool_options["socket_timeout"])

    def pool_connections(self) -> tuple[int, int] | None:
        """redis-py's connection pool: connections in use, and idle ones."""
        pool = getattr(self._client, "connection_pool", None)  # a cluster client has none
        in_use = getattr(pool, "_in_use_connections", None)
        idle = getattr(pool, "_available_connections", None)
        if in_use is None or idle is None:
            return None
        return len(in_use), len(idle)

    async def connect(self) -> None:
        """Open the pool and check the server answers (and accepts the credentials)."""
        self._client = self._open_client()
        self._save_script = _resp.Script(_SAVE_SCRIPT)
        self._check_script = self._client.register_script(_CHECK_SCRIPT)
        self._count_script = self._client.register_script(_COUNT_SCRIPT)
        self._page_script = self._client.register_script(_PAGE_SCRIPT)
        self._delete_checked_script = self._client.register_script(_DELETE_CHECKED_SCRIPT)
        self._settle_insert_script = self._client.register_script(_SETTLE_INSERT_SCRIPT)
        try:
            # A server that accepts and never answers must fail within the connect timeout,
            # not the (longer) socket timeout: the first reply is part of connecting.
            await asyncio.wait_for(
                self._call(self._client.ping), self._pool_options["socket_connect_timeout"]
            )
        except BaseException:
            await self.disconnect()
            raise

    def _open_client(self) -> aioredis.Redis:
        """A client on a waiting pool (connections open on first use)."""
        pool = _WaitingPool.from_url(_server_url(self._parsed), **self._pool_options)
        return aioredis.Redis(connection_pool=pool)

    async def disconnect(self) -> None:
        """Close the pool."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    async def save_records(self, records: Sequence[StoredRecord]) -> list[int]:
        """Write the records, keeping ``created_at``; each checked against its revision.

        Up to ``batch_size`` records carrying up to 1 MiB of documents in the call (staged
        ones weigh nothing, see ``_CHUNK_BYTES``) are one script call (one round trip), all
        or nothing. A larger batch is checked whole first (read-only, one call per chunk): a
        conflict found there writes nothing. Its chunks are then written in order, each one
        script call that checks its records again, so no call blocks the server for long. A
        writer that changes a record of a later chunk in between makes the save raise
        :class:`~pydantic_toast.ConcurrencyError` with the earlier chunks written (listed in
        its ``written``). A batch of first saves without TTL is written by transactions
        instead (see :meth:`_insert_many`).
        """
        size = self._batch_size
        first = records[0] if len(records) == 1 else None
        if first is not None and not first.ttl and self._inserts_directly:
            if first.revision == 0 and len(first.data) <= _PIECE:  # above: see _Staging
                return await self._insert(first)
            revision = first.revision
            if revision and len(first.data) <= _STAGE_ABOVE and await self._update(first, revision):
                return [revision + 1]
        elif self._inserts_directly and _first_saves(records):
            inserted = await self._insert_many(records)
            if inserted is not None:
                return inserted
        spans = batch_spans(records, size, most_bytes=_CHUNK_BYTES, carried_up_to=self._stage_above)
        if len(spans) <= 1:
            return await self._save_chunk(records)
        chunks = [records[start:end] for start, end in spans]
        for (offset, _), chunk in zip(spans, chunks, strict=True):
            keys = [self.key(r.class_name, r.id) for r in chunk]
            expected = expectations(chunk)
            result = await self._call(partial(self._check_script, keys=keys, args=expected))
            if result[0] == 0:
                raise _conflict(records[offset + int(result[1]) - 1], int(result[2]))
        revisions: list[int] = []
        for chunk in chunks:
            try:
                revisions += await self._save_chunk(chunk)
            except ConcurrencyError as exc:
                written = zip(records, revisions, strict=False)  # the chunks before this one
                exc.written = {record.key: revision for record, revision in written}
                raise
        return revisions

    async def _insert(self, record: StoredRecord) -> list[int]:
        """A record's first save, without TTL: one transaction (see ``_MULTI``), else the
        script (a record with this id exists: a conflict)."""
        named = self._class_keys(record.class_name)
        key = named.records + str(record.id).encode()
        score = repr(record.created_at.timestamp()).encode()
        # The document's data is written as it is, never copied into the SET command first.
        queued = (
            _MULTI,
            *_set_new(key, record),
            b"%b$%d\r\n%b\r\n$36\r\n%b\r\n" % (named.add_one, len(score), score, key[-36:]),
            named.exists_expiry,
        )
        pool = self._connected().connection_pool
        replies = await self._call(lambda: _resp.run(pool, _EXEC, before=queued, replies_before=4))
        for reply in replies:  # a refused command (read-only replica, ACL, OOM) raises itself
            if isinstance(reply, Exception):
                raise reply
        written, added, expiring = replies[-1]
        if written is None:
            return await self._save_chunk([record])
        if isinstance(added, Exception):  # the record is written; its index is not a set
            raise added
        if not added or expiring:
            await self._settle_insert(record, key, named)
        return [1]

    def _record_keys(
        self, records: Sequence[StoredRecord], classes: dict[str, _ClassKeys]
    ) -> list[bytes]:
        """The keys of ``records``, their classes' keys added to ``classes``."""
        keys: list[bytes] = []
        for record in records:
            named = classes.get(record.class_name)
            if named is None:
                named = classes[record.class_name] = self._class_keys(record.class_name)
            keys.append(named.records + str(record.id).encode())
        return keys

    async def _any_exist(self, keys: list[list[bytes]], classes: dict[str, _ClassKeys]) -> bool:
        """Whether a record of ``keys`` (one list per chunk) exists or a class of ``classes``
        has an expiry set (one round trip for a chunk, pipelined for more).

        Each chunk's command, a copy of its keys, is packed as it is sent: packed all at once,
        the commands and the socket's buffer of them held 0.4x the JSON of a batch of
        10-field records at the save's peak."""
        expiry = [named.exists_expiry for named in classes.values()]
        blocks = _existence_checks(keys, expiry)
        pool = self._connected().connection_pool
        found = await self._call(lambda: _resp.pipeline(pool, blocks, window=_INSERT_WINDOW))
        for reply in found:
            if isinstance(reply, Exception):
                raise reply
        return any(found)

    async def _insert_many(self, records: Sequence[StoredRecord]) -> list[int] | None:
        """First saves of several records without TTL as transactions (see ``_INSERT_WINDOW``);
        ``None`` when a record of the batch exists or a class has an expiry set (nothing was
        written: the save script decides)."""
        size = self._batch_size
        classes: dict[str, _ClassKeys] = {}
        starts = range(0, len(records), size)
        # Each chunk's keys, dropped once its transaction is packed (the last chunk's first).
        keys = [self._record_keys(records[start : start + size], classes) for start in starts]
        if await self._any_exist(keys, classes):
            return None
        keys.reverse()
        pool = self._connected().connection_pool
        blocks = (
            _insertions(records[start : start + size], keys.pop(), classes) for start in starts
        )
        # Only the replies read below: the transactions' (lists) and the refusals, not an OK
        # or QUEUED per command.
        replies = await self._call(
            lambda: _resp.pipeline(pool, blocks, window=_INSERT_WINDOW, kept=(list, Exception))
        )
        refused: list[int] = []  # positions of records another writer created meanwhile
        for reply in replies:  # a refused command (read-only, ACL, OOM): EXECABORT too
            if isinstance(reply, Exception):
                raise reply
        execs = replies
        for start, reply in zip(starts, execs, strict=True):
            chunk = records[start : start + size]
            sets = reply[: len(chunk)]
            refused += [start + i for i, done in enumerate(sets) if done is None]
            for position, class_name in enumerate(dict.fromkeys(r.class_name for r in chunk)):
                added, expiring = reply[len(chunk) + 2 * position : len(chunk) + 2 * position + 2]
                if isinstance(added, Exception):  # the records are written; the index is not a set
                    raise added
                landed = [
                    start + i
                    for i, record in enumerate(chunk)
                    if record.class_name == class_name and sets[i] is not None
                ]
                if added != len(landed) or expiring:
                    for i in landed:
                        (key,) = self._record_keys([records[i]], classes)
                        await self._settle_insert(records[i], key, classes[class_name])
        revisions = [1] * len(records)
        if refused:
            try:
                again = await self.save_records([records[i] for i in refused])
            except ConcurrencyError as exc:
                left = set(refused)
                exc.written = {r.key: 1 for i, r in enumerate(records) if i not in left}
                raise
            for i, revision in zip(refused, again, strict=True):
                revisions[i] = revision
        return revisions

    def _class_keys(self, class_name: str) -> _ClassKeys:
        """``class_name``'s keys, packed (kept for the classes met last)."""
        named = self._named.get(class_name)
        if named is None:
            if len(self._named) >= _NAMED:
                self._named.clear()
            named = self._named[class_name] = _ClassKeys(
                self._start_of_keys(class_name).encode(),
                self.index_key(class_name).encode(),
                self.expiry_key(class_name).encode(),
            )
        return named

    async def _settle_insert(self, record: StoredRecord, key: bytes, named: _ClassKeys) -> None:
        """After a first save by transaction: the index entry's score and the expiry set put
        right (see ``_SETTLE_INSERT_SCRIPT``)."""
        keys = [key, named.index, named.expiry]
        created_at = record.created_at.isoformat().encode()
        arguments = [key[-36:], repr(record.created_at.timestamp()).encode(), created_at]
        await self._call(partial(self._settle_insert_script, keys=keys, args=arguments))

    async def _update(self, record: StoredRecord, revision: int) -> bool:
        """Whether the update script wrote ``record``, expected at ``revision`` (see
        ``_UPDATE_SCRIPT``); if not, nothing was written and the save script decides."""
        named = self._class_keys(record.class_name)
        key = named.records + str(record.id).encode()
        created_at = record.created_at.isoformat().encode()
        document = b"".join(
            (
                _UPDATED_HEAD % (created_at, revision + 1, record.schema_version),
                record.updated_at.isoformat().encode(),
                b'","data":',
                record.data,
                b"}",
            )
        )
        keys = [key, named.expiry]
        arguments = [created_at, b"%d" % revision, document]
        pool = self._connected().connection_pool
        script = self._update_script
        packed = script.call(keys, arguments)
        (written,) = await self._call(lambda: _resp.run(pool, packed, script=script))
        if isinstance(written, Exception):
            raise written
        return bool(written)

    async def _save_chunk(self, records: Sequence[StoredRecord]) -> list[int]:
        """Write the records in one script call (one round trip): all or nothing."""
        stages: list[bytes] = []
        streamed: list[_Staging] = []
        record_keys: list[bytes] = []
        stage_keys: list[bytes] = []
        arguments: list[bytes] = []
        for record in records:
            key = self.key(record.class_name, record.id).encode()
            record_keys.append(key)
            created_at = record.created_at.isoformat().encode()
            rest = b',"schema_version":%d,"updated_at":"%b","data":' % (
                record.schema_version,
                record.updated_at.isoformat().encode(),
            )
            if len(record.data) > self._stage_above:
                stage_key = b"%b:staged:%b" % (key, uuid4().hex.encode())
                header = b'{"created_at":"%b","revision":0' % created_at
                head = header.ljust(_STAGED_HEADER) + rest
                if len(record.data) > _PIECE:
                    streamed.append(_Staging(stage_key, head, record.data))
                else:
                    document = b"".join((head, record.data, b"}"))
                    stages.append(command(b"SET", stage_key, document, b"PX", _STAGED_PX))
                stage_keys.append(stage_key)
                document = b""
            else:
                stage_keys.append(key)  # unused; in the record's slot (Redis Cluster)
                document = b"".join((rest, record.data, b"}"))
            arguments += (
                document,
                created_at,
                repr(record.created_at.timestamp()).encode(),
                # At least 1 ms: a ttl that rounds to 0 would read as "never expires".
                b"%d" % max(1, round(record.ttl * 1000)) if record.ttl else b"0",
                b"" if record.revision is None else b"%d" % record.revision,
            )
        keys = record_keys + [self._index_key_of(r).encode() for r in records]
        keys += [self._expiry_key_of(r).encode() for r in records]
        keys += stage_keys
        if streamed:
            result = await self._save_streamed(keys, arguments, stages, streamed)
        else:
            result = await self._call(lambda: self._run_save(keys, arguments, stages))
        if result[0] == 0:
            raise _conflict(records[int(result[1]) - 1], int(result[2]))
        return [int(revision) for revision in result[1:]]

    async def _run_save(
        self, keys: list[bytes], arguments: list[bytes], stages: list[bytes]
    ) -> Any:
        """The save script's reply, the staging SETs sent before it in the same write."""
        pool = self._connected().connection_pool
        script = self._save_script
        replies = await _resp.run(
            pool,
            script.call(keys, arguments),
            before=stages,
            replies_before=len(stages),
            script=script,
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies[-1]

    async def _save_streamed(
        self,
        keys: list[bytes],
        arguments: list[bytes],
        stages: list[bytes],
        streamed: list[_Staging],
    ) -> Any:
        """The save script's reply, the documents above ``_PIECE`` staged in pieces first.

        Their pieces' replies are checked before the script runs (a piece refused, or a staged
        copy that expired meanwhile, writes nothing). A save that fails or is cancelled on the
        way deletes the staged copies it wrote (a script that ran has moved them already).
        """
        pool = self._pool_for(keys[0])
        try:
            await self._call(partial(_stage_in_pieces, pool, streamed))
            return await self._call(lambda: self._run_save(keys, arguments, stages))
        except BaseException:
            written = [staging.key for staging in streamed if staging.started]
            if written:  # none when the pool was still being waited for
                with contextlib.suppress(Exception):  # they expire anyway (_Staging.expiry)
                    await self._drop_staged(pool, written)
            raise

    def _pool_for(self, key: bytes) -> _resp.Pool:
        """The pool whose connections reach ``key`` (and every key of its slot)."""
        return self._connected().connection_pool

    async def _drop_staged(self, pool: _resp.Pool, keys: list[bytes]) -> None:
        """Delete the staged copies ``keys`` of a save that failed, through ``pool``."""
        await _read(pool, command(b"DEL", *keys))

    async def load_records(self, keys: Sequence[RecordKey]) -> list[StoredRecord | None]:
        """Read the records: the first MiB of one (the rest in pieces if there is more), or one
        MGET per ``batch_size`` keys (a document above ``_PIECE`` taken off the socket in
        pieces: see ``_resp.read_values``)."""
        pool = self._connected().connection_pool
        values: list[_resp.Value]
        if len(keys) == 1:
            text = self.key(*keys[0])
            name = text.encode()
            packed = b"*4\r\n$8\r\nGETRANGE\r\n$%d\r\n%b\r\n%b" % (len(name), name, _FIRST_PIECE)
            (first,) = await self._call(lambda: _read(pool, packed))
            if len(first) == _PIECE:
                return [await self._call(partial(self._load_large, keys[0], text, first))]
            values = [first or None]  # GETRANGE reads a missing key as empty
        else:
            size, values = self._batch_size, []
            if type(keys) is ClassKeys:  # one class: the keys' common part made once
                start_of_key = self._start_of_keys(keys.class_name)
                ids = keys.as_str() or [str(id) for id in keys.ids]
                chunks = [
                    _mget(start_of_key, ids[start : start + size])
                    for start in range(0, len(ids), size)
                ]
            else:
                names = [self.key(*key).encode() for key in keys]
                chunks = [
                    command(b"MGET", *names[start : start + size])
                    for start in range(0, len(names), size)
                ]
            values = await self._call(partial(_resp.read_many_values, pool, chunks, piece=_PIECE))
        return self._records_in(None, keys, values)

    def _records_in(
        self,
        names: Sequence[str] | None,
        keys: Sequence[RecordKey],
        values: list[_resp.Value],
    ) -> list[StoredRecord | None]:
        """The records of ``keys`` in ``values`` (an MGET's reply, see ``_resp.read_values``),
        stored under ``names`` (``None``: :meth:`key`'s).

        A whole document is read here, in one loop, as :meth:`_parse` reads it; anything but
        a well-formed document goes to :meth:`_parse`, whose error names it. A document read
        in pieces has its header read from the first piece and its data joined once from
        views of the pieces (a copy of a 100 KB document costs 100,000 instructions). Each
        document is let go of as soon as its data is cut out of it, so that the copy can take
        the memory of the one before: a 100 KB document's copy into fresh memory cost 70-150
        µs (page faults), into the memory just freed 15 µs.

        A batch's loop runs with the garbage collector paused (see :mod:`.._collector`): a
        record is a container object, and 10,000 of them ran the collector fourteen times
        and moved the batch towards the oldest generation before its build (which pauses it).
        """
        match_header, record_of = _DOCUMENT.match, _record_of
        records: list[StoredRecord | None] = []
        append = records.append
        with paused_for(len(values)):
            for position, ((class_name, id), value) in enumerate(zip(keys, values, strict=True)):
                if value is None:
                    append(None)
                    continue
                values[position] = None
                if isinstance(value, bytes):
                    match = match_header(value)
                    if match is not None and value[-1:] == b"}":
                        record = record_of(match, value[match.end() : -1], class_name, id)
                        if record is not None:
                            append(record)
                            continue
                    name = None if names is None else names[position]
                    append(self._parse(name, class_name, id, value))  # raises, naming it
                    continue
                name = None if names is None else names[position]
                pieces = [memoryview(piece) for piece in value]
                value.clear()
                match = match_header(pieces[0])  # it holds the header (_resp.HEAD)
                if match is None or pieces[-1][-1:].tobytes() != b"}":  # not ours: raises
                    append(self._parse(name, class_name, id, bytes(pieces[0]) + b"..."))
                    continue
                pieces[0] = pieces[0][match.end() :]
                pieces[-1] = pieces[-1][:-1]
                data = b"".join(pieces)
                del pieces
                record = record_of(match, data, class_name, id)
                if record is None:  # unreadable timestamps: raises, naming it
                    record = self._parse(name, class_name, id, match.group(), data)
                append(record)
        return records

    async def _load_large(
        self, record_key: RecordKey, name: str, first: bytes
    ) -> StoredRecord | None:
        """The record stored under ``name`` whose first ``_PIECE`` bytes are ``first``, the
        rest read in pieces (see ``_load_in_pieces``)."""
        return await self._load_in_pieces(self._pool_for(name.encode()), record_key, first)

    async def _load_in_pieces(
        self, pool: _resp.Pool, record_key: RecordKey, first: bytes
    ) -> StoredRecord | None:
        """The record whose first ``_PIECE`` bytes are ``first``, the rest read in pieces.

        The pieces are assembled once, without the document's header. A document changed
        while it was read (its header read again differs, or a piece has another length than
        its STRLEN promised) is read again whole, with one GET.
        """
        class_name, id = record_key
        name = self.key(class_name, id)
        match = _DOCUMENT.match(first)
        if match is None:
            return self._parse(name, class_name, id, first)  # not ours: the error names it
        key = name.encode()
        head = first[: match.end()]
        length = (await _read(pool, command(b"STRLEN", key)))[0]
        starts = range(len(first), length, _PIECE)
        spans = [(start, min(start + _PIECE, length)) for start in starts]
        spans.append((0, len(head)))  # the header again, last: unchanged meanwhile?
        pieces: list[Any] = [first[len(head) :]]
        await _resp.stream(
            pool,
            (command(b"GETRANGE", key, b"%d" % start, b"%d" % (end - 1)) for start, end in spans),
            pieces.append,
            window=_READ_WINDOW,
        )
        again = pieces.pop()
        sizes = [len(pieces[0])] + [end - start for start, end in spans[:-1]]
        if (
            length >= len(first)
            and again == head
            and [len(piece) if isinstance(piece, bytes) else -1 for piece in pieces] == sizes
            and pieces[-1].endswith(b"}")
        ):
            pieces[-1] = pieces[-1][:-1]
            return self._parse(name, class_name, id, head, b"".join(pieces))
        del pieces
        value = (await _read(pool, command(b"GET", key)))[0]
        return None if value is None else self._parse(name, class_name, id, value)

    async def delete(self, id: UUID, class_name: str) -> bool:
        """Delete one record; return whether it existed."""
        client = self._connected()

        async def delete_both() -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(self.key(class_name, id))
                pipe.zrem(self.index_key(class_name), str(id))
                pipe.zrem(self.expiry_key(class_name), str(id))
                return await pipe.execute()

        deleted, _, _ = await self._call(delete_both)
        return bool(deleted)

    async def delete_checked(
        self, id: UUID, class_name: str, revision: int, *, created_at: datetime | None = None
    ) -> bool:
        """Delete one record at ``revision`` (and ``created_at``): one script (check and delete,
        atomically)."""
        keys = [self.key(class_name, id), self.index_key(class_name), self.expiry_key(class_name)]
        args = [str(id), revision, checked_created_at(created_at)]
        reply = await self._call(lambda: self._delete_checked_script(keys=keys, args=args))
        return checked_outcome(class_name, id, revision, reply)

    async def list_records(
        self, class_name: str, *, limit: int, after: PageCursor | None = None
    ) -> list[StoredRecord]:
        """Records newest first (creation time, then id), past ``after``: one script call.

        The script walks the class index from the cursor and reads the documents in the same
        call (one round trip); entries of expired records are skipped, never removed.
        """
        start_of_key = self._start_of_keys(class_name)
        return await self._page(self.index_key(class_name), start_of_key, class_name, limit, after)

    async def _page(
        self,
        index: str,
        prefix: str,
        class_name: str,
        limit: int,
        after: PageCursor | None,
        *,
        whole: bool = False,
    ) -> list[StoredRecord]:
        """One run of the page script over ``index``, whose records' keys start with ``prefix``.

        A document above ``_PIECE`` comes as its first ``_PIECE`` bytes, and the rest is read
        in pieces as a single load does (a record rewritten meanwhile is read whole, in its
        new version: its place in the page, by creation time, is the same). A record deleted
        meanwhile would leave the page short, which reads as the last page: the page is then
        read again with ``whole`` documents, in one script call.
        """
        arguments: list[Any] = [prefix, limit, "", "", "" if whole else _PIECE]
        if after is not None:
            arguments[2:4] = [repr(after.created_at.timestamp()), str(after.id)]
        flat = await self._call(partial(self._run_page, index, arguments))
        records = []
        for position in range(0, len(flat), 2):
            member = flat[position].decode()
            id, value, name = UUID(member), flat[position + 1], prefix + member
            if len(value) < _PIECE or whole:
                try:
                    records.append(self._parse(name, class_name, id, value))
                except StoredDataError as exc:
                    raise await self._resumable(exc, index, member) from None
                continue
            try:
                record = await self._call(partial(self._load_large, (class_name, id), name, value))
            except StoredDataError as exc:
                raise await self._resumable(exc, index, member) from None
            if record is None:
                return await self._page(index, prefix, class_name, limit, after, whole=True)
            records.append(record)
        return records

    async def _resumable(self, exc: StoredDataError, index: str, member: str) -> StoredDataError:
        """``exc``, for the value of index entry ``member`` that is no record, with the cursor
        past that entry (its score is its creation time): a caller that leaves it out (a
        ``MessageStore(skip_invalid=True)``) lists on from there, as it does past a row whose
        data it cannot read on the SQL backends."""
        score = await self._call(lambda: self._connected().zscore(index, member))
        if score is not None:  # None: deleted meanwhile, and the next listing will not see it
            exc.resume_after = PageCursor(datetime.fromtimestamp(score, UTC), UUID(member))
        return exc

    async def _run_page(self, index: str, arguments: list[Any]) -> list[Any]:
        """The page script's reply on ``index`` (see ``_PAGE_SCRIPT``)."""
        return await self._page_script(keys=[index], args=arguments)  # type: ignore[no-any-return]

    async def count(self, class_name: str) -> int:
        """How many live records of ``class_name`` there are: an index lookup, O(log n)."""
        keys = [self.index_key(class_name), self.expiry_key(class_name)]
        return int(await self._call(lambda: self._count_script(keys=keys)))

    async def list_class_names(self) -> list[str]:
        """The class names that have an index (a sorted set Redis removes with its last
        member): one SCAN of the database's keys, ``COUNT 1000`` per call."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._prefix) + ":*:index"
        start, end = len(self._prefix) + 1, -len(":index")
        names = set()
        async for key in self._connected().scan_iter(match=pattern, count=1000):
            names.add((key.decode() if isinstance(key, bytes) else key)[start:end])
        return sorted(names)

    def _connected(self) -> aioredis.Redis:
        if self._client is None:
            raise StorageUsageError(f"{self!r} is not connected: call connect() first")
        return self._client

    def _parse(
        self, key: str | None, class_name: str, id: UUID, value: bytes, data: bytes | None = None
    ) -> StoredRecord:
        """The record in the document ``value`` (or, given ``data``, in its header ``value``
        followed by ``data`` and the closing brace); ``key``: its Redis key, ``None`` when it
        is :meth:`key`'s (only an error names it)."""
        match = _DOCUMENT.match(value)
        if match is None or (data is None and not value.endswith(b"}")):
            raise StoredDataError(
                f"the value under Redis key {key or self.key(class_name, id)} is not a "
                "pydantic-toast record (expected a JSON "
                '{"created_at", "schema_version", "updated_at", "data"} document): it was '
                "written by something else or damaged; it is left untouched",
                class_name=class_name,
                id=id,
            )
        record = _record_of(
            match, value[match.end() : -1] if data is None else data, class_name, id
        )
        if record is None:
            raise StoredDataError(
                f"the value under Redis key {key or self.key(class_name, id)} has unreadable "
                "timestamps",
                class_name=class_name,
                id=id,
            )
        return record

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """Run one Redis command (the boundary translates its errors and retries)."""
        return await command()

    async def discard_connections(self) -> None:
        """Drop the pool's connections after one was lost (a restart, an idle timeout)."""
        if self._client is not None:
            await self._client.connection_pool.disconnect()


def _mget(start_of_key: str, ids: list[str]) -> bytes:
    """The packed ``MGET`` of the keys ``start_of_key`` followed by each of ``ids`` (each
    ``str(id)``, so every key is as long): made as one text and encoded once. Encoding and
    packing each key on its own cost 3,000 instructions a record more (callgrind)."""
    length = len(start_of_key.encode()) + 36
    between = f"\r\n${length}\r\n{start_of_key}"
    return (
        f"*{len(ids) + 1}\r\n$4\r\nMGET\r\n${length}\r\n{start_of_key}" + between.join(ids) + "\r\n"
    ).encode()


def _record_of(
    match: re.Match[bytes], data: bytes, class_name: str, id: UUID
) -> StoredRecord | None:
    """The record of ``class_name`` and ``id`` whose document's header is ``match`` (of
    ``_DOCUMENT``) and whose data is ``data``; ``None`` when its timestamps are unreadable."""
    created_text, revision, version, updated_text = match.groups()
    try:
        created = _from_iso(created_text.decode())
        # A record never updated (most, in a batch load) was last written when it was created.
        updated = created if updated_text == created_text else _from_iso(updated_text.decode())
    except ValueError:
        return None
    number = _NUMBER_TEXTS.get
    return read_record(
        class_name,
        id,
        data,
        number(version) or int(version),
        created,
        updated,
        (number(revision) or int(revision)) if revision else 1,
    )


# The usual schema versions and revisions by their text: a lookup costs a third of int(bytes).
_NUMBER_TEXTS = {b"%d" % number: number for number in range(1, 1000)}


async def _read(pool: _resp.Pool, packed: bytes) -> list[Any]:
    """The reply of one read command (an error reply raised)."""
    replies = await _resp.run(pool, packed)
    if isinstance(replies[0], Exception):
        raise replies[0]
    return replies


class _Staging:
    """A document above ``_PIECE`` staged in pieces under its own key before the save script.

    ``SET`` writes its head with an expiry (``expiry``: in case the script never runs; long
    enough to write the rest at 1 MB/s), ``SETRANGE`` at its last byte sizes it once (no
    reallocation per piece), and each piece of the data is a ``SETRANGE`` in place. Every
    ``SETRANGE`` answers the key's length: a key that expired meanwhile would be created
    again, shorter, by the next piece, without an expiry (a reply that is not ``length``).
    """

    __slots__ = ("data", "head", "key", "length", "started")

    def __init__(self, key: bytes, head: bytes, data: bytes) -> None:
        self.key, self.head, self.data = key, head, data
        self.length = len(head) + len(data) + 1
        self.started = False  # whether its first command was taken to be sent

    def commands(self) -> Iterator[bytes]:
        """The packed commands, each made when the one before has been sent."""
        self.started = True
        yield command(b"SET", self.key, self.head, b"PX", b"%d" % self.expiry)
        yield command(b"SETRANGE", self.key, b"%d" % (self.length - 1), b"}")
        view = memoryview(self.data)
        name = command(b"SETRANGE", self.key)[4:]  # without its own length, *3
        for start in range(0, len(self.data), _PIECE):
            offset = b"%d" % (len(self.head) + start)
            piece = view[start : start + _PIECE]
            lengths = b"*4\r\n%b$%d\r\n%b\r\n$%d\r\n" % (name, len(offset), offset, len(piece))
            yield b"".join((lengths, piece, b"\r\n"))  # the piece copied once, here

    @property
    def expiry(self) -> int:
        """Milliseconds the staged copy lives without its script."""
        return int(_STAGED_PX) + len(self.data) // 1000

    def check(self, replies: Iterator[Any]) -> None:
        """Take this staging's replies from ``replies``; raise if one is not what it should be."""
        for position in range((len(self.data) + _PIECE - 1) // _PIECE + 2):
            reply = next(replies)
            if isinstance(reply, Exception):
                raise reply
            if reply != (b"OK" if position == 0 else self.length):
                raise StorageOperationError(
                    f"the staged copy of a large record (Redis key {self.key.decode()}) "
                    "expired or was changed while it was written: nothing was saved; retry the "
                    "save (a document is staged at 1 MB/s at least)"
                )


async def _stage_in_pieces(pool: _resp.Pool, stagings: list[_Staging]) -> None:
    """Write the staged copies on one connection, each piece sent when the last is out.

    After a refused command (a Redis Cluster slot being migrated answers ASK) no more pieces
    are sent: the staging has failed, and a 100 MB document would send 100 refused pieces.
    """
    replies: list[Any] = []
    refused: list[Exception] = []

    def take(reply: Any) -> None:
        replies.append(reply)
        if isinstance(reply, Exception):
            refused.append(reply)

    def pieces() -> Iterator[bytes]:
        for staging in stagings:
            for packed in staging.commands():
                if refused:
                    return
                yield packed

    await _resp.stream(pool, pieces(), take, window=_WRITE_WINDOW)
    if refused:
        raise refused[0]
    answers = iter(replies)
    for staging in stagings:
        staging.check(answers)


class _ClassKeys:
    """A class's keys as a save packs them.

    Attributes:
        records: The prefix of its record keys (the id follows).
        index: Its index; ``add``: ``ZADD <index> NX`` without the argument count, and
            ``add_one`` with it, for one entry (score and id follow).
        expiry: Its expiry set; ``exists_expiry``: the packed ``EXISTS <expiry>``.
    """

    __slots__ = ("add", "add_one", "exists_expiry", "expiry", "index", "records")

    def __init__(self, records: bytes, index: bytes, expiry: bytes) -> None:
        self.records, self.index, self.expiry = records, index, expiry
        self.add = b"$4\r\nZADD\r\n$%d\r\n%b\r\n$2\r\nNX\r\n" % (len(index), index)
        self.add_one = b"*5\r\n" + self.add
        self.exists_expiry = command(b"EXISTS", expiry)


def _first_saves(records: Sequence[StoredRecord]) -> bool:
    """Whether every record is a first save (revision 0) without TTL that fits one SET."""
    return all(r.revision == 0 and not r.ttl and len(r.data) <= _PIECE for r in records)


def _set_new(key: bytes, record: StoredRecord) -> tuple[bytes, bytes, bytes]:
    """The packed ``SET key <document at revision 1> NX`` of ``record``'s first save, in
    three pieces: its data is the middle one, never copied into the command."""
    head = _INSERTED_HEAD % (
        record.created_at.isoformat().encode(),
        record.schema_version,
        record.updated_at.isoformat().encode(),
    )
    data = record.data
    return (
        b"*4\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b"
        % (len(key), key, len(head) + len(data) + 1, head),
        data,
        b"}\r\n$2\r\nNX\r\n",
    )


def _existence_checks(
    keys: list[list[bytes]], expiry: list[bytes]
) -> Iterator[tuple[list[bytes], int]]:
    """The blocks of :meth:`RedisBackend._any_exist`: an ``EXISTS`` of each chunk's ``keys``,
    packed when taken, the ``expiry`` checks (packed commands) sent with the last one."""
    last = len(keys) - 1
    for index, chunk in enumerate(keys):
        checks = [command(b"EXISTS", *chunk)]
        if index == last:
            checks += expiry
        yield checks, len(checks)


def _insertions(
    records: Sequence[StoredRecord],
    keys: Sequence[bytes],
    classes: dict[str, _ClassKeys],
) -> tuple[list[bytes], int]:
    """One transaction of first saves (see ``_INSERT_WINDOW``): its packed pieces, and how many
    replies it gets."""
    pieces = [_MULTI]
    entries: dict[str, list[bytes]] = {}
    for record, key in zip(records, keys, strict=True):
        pieces += _set_new(key, record)
        score = repr(record.created_at.timestamp()).encode()
        entry = b"$%d\r\n%b\r\n$36\r\n%b\r\n" % (len(score), score, key[-36:])
        members = entries.get(record.class_name)
        if members is None:
            members = entries[record.class_name] = []
        members.append(entry)
    for class_name, members in entries.items():
        named = classes[class_name]
        pieces.append(b"*%d\r\n%b" % (3 + 2 * len(members), named.add))
        pieces += members
        pieces.append(named.exists_expiry)
    pieces.append(_EXEC)
    return pieces, len(records) + 2 * len(entries) + 2


def checked_created_at(created_at: datetime | None) -> str:
    """The checked-delete script's created_at argument (``''``: the revision alone decides)."""
    return "" if created_at is None else created_at.isoformat()


def checked_outcome(class_name: str, id: UUID, revision: int, reply: Sequence[int]) -> bool:
    """Whether a checked delete deleted, from its script's reply: the revision found (0:
    none) and whether it deleted.

    Raises:
        ConcurrencyError: The record is at another revision, or at this one but created again
            since (another ``created_at``); nothing was deleted.
    """
    current, deleted = (int(value) for value in reply)
    if deleted:
        return True
    if current == 0:
        return False
    raise ConcurrencyError(class_name, id, expected=revision, current=current, deleting=True)


def expectations(records: Sequence[StoredRecord]) -> list[Any]:
    """What each record expects to find, for the check scripts: its revision ('': any) and
    its created_at, as the save script writes it (an existing record must have both)."""
    pairs: list[Any] = []
    for record in records:
        pairs += ("" if record.revision is None else record.revision, record.created_at.isoformat())
    return pairs


def _conflict(record: StoredRecord, current: int) -> ConcurrencyError:
    """The error for ``record`` expecting another revision than ``current`` (0: none)."""
    return ConcurrencyError(
        record.class_name,
        record.id,
        expected=record.revision or 0,
        current=current or None,
        ttl=record.ttl,
    )


def _options(url: StorageURL) -> tuple[str, dict[str, Any]]:
    unknown = sorted(set(url.query) - _OPTIONS)
    if unknown:
        raise StorageConfigurationError(
            f"{url.masked}: unknown option(s) {shorten(', '.join(unknown))}; Redis URLs take "
            f"{', '.join(sorted(_OPTIONS))}"
        )
    batch_size_of(url)
    if url.path.strip("/") and not url.path.strip("/").isdigit():
        raise StorageConfigurationError(
            f"{url.masked}: the path must be a database number, e.g. redis://host:6379/0"
        )
    options: dict[str, Any] = {}
    for name, default in _NUMBERS.items():
        raw = url.query.get(name)
        try:
            value = type(default)(raw) if raw is not None else default
        except ValueError:
            raise StorageConfigurationError(
                f"{url.masked}: {name} must be a number, got {shorten(raw)!r}"
            ) from None
        if not value > 0:  # (NaN too)
            raise StorageConfigurationError(f"{url.masked}: {name} must be positive")
        options["timeout" if name == "pool_timeout" else name] = value
    for name in _SSL:
        if name in url.query:
            if url.scheme != "rediss":
                raise StorageConfigurationError(f"{url.masked}: {name} needs a rediss:// URL")
            options[name] = url.query[name]
    prefix = url.query.get("prefix", "pydantic_toast")
    if not prefix or ":" in prefix:
        raise StorageConfigurationError(f"{url.masked}: prefix must be non-empty, without ':'")
    return prefix, options


def _server_url(url: StorageURL) -> str:
    """The URL redis-py gets: ours without the options it does not know, password encoded."""
    return url.without_query


def _single_node(raw: str, names: Iterable[str], path: str | None = None) -> str:
    """``raw`` as a plain ``redis://`` URL the shared option checks accept.

    The scheme loses its ``+cluster``/``+sentinel`` part, the options in ``names`` (the
    variant's own) are left out, and the path becomes ``path`` when given.
    """
    scheme = raw.partition("://")[0].split("+", 1)[0]
    return rewrite_url(raw, scheme=scheme, path=path, drop=frozenset(names))
