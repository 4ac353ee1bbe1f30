"""The Lua scripts of the `redis://` broker: each step that must be atomic, in one round trip.

Time is the server's (`TIME`), never a client's clock: due times of retries are
compared on the server that stores them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError


class Script:
    """A Lua script run by its SHA1, loaded again when the server lost it (a restart)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.execute_command("SCRIPT", "LOAD", self.source)
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


#: Append events to their streams, each at most once per dedupe window.
#: KEYS: the stream and the dedupe key of each event, in pairs.
#: ARGV: the window in ms (0: no dedupe), then per event its mode ('' or 'r': only into
#: a stream that exists, for reply channels) and its CloudEvent JSON.
#: Returns how many were appended (not: sent before, or to a reply channel that is gone).
PUBLISH = Script("""
local window = tonumber(ARGV[1])
local appended = 0
for i = 1, #KEYS / 2 do
  local stream, seen = KEYS[2 * i - 1], KEYS[2 * i]
  if window == 0 or redis.call('EXISTS', seen) == 0 then
    local id
    if ARGV[2 * i] == 'r' then
      id = redis.call('XADD', stream, 'NOMKSTREAM', '*', 'event', ARGV[2 * i + 1])
    else
      id = redis.call('XADD', stream, '*', 'event', ARGV[2 * i + 1])
    end
    if window > 0 then redis.call('SET', seen, '1', 'PX', window) end
    if id then appended = appended + 1 end
  end
end
return appended
""")

#: Take a group's due retries and, given a cursor, reclaim what a consumer stopped
#: renewing for a lease (XAUTOCLAIM, JUSTID: nothing counted yet). Retries not yet due
#: stay where they are. Each taken event is claimed with XCLAIM, which counts the
#: delivery: the attempt is the pending entry's delivery count.
#: KEYS: stream, retries. ARGV: group, consumer, lease ms, cursor ('' = no reclaim), count.
#: Returns {{id, fields, deliveries}, ...}, the next cursor, ms until the next retry (-1).
TAKE = Script("""
local stream, retries = KEYS[1], KEYS[2]
local group, me, cursor, count = ARGV[1], ARGV[2], ARGV[4], tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taken = {}
local function take(id)
  local entry = redis.call('XCLAIM', stream, group, me, 0, id)[1]
  if entry then
    local pending = redis.call('XPENDING', stream, group, id, id, 1)
    taken[#taken + 1] = {entry[1], entry[2], pending[1][4]}
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', retries, '-inf', now, 'LIMIT', 0, count)) do
  redis.call('ZREM', retries, id)
  take(id)
end
local next_cursor = cursor
if cursor ~= '' then
  local found = redis.call('XAUTOCLAIM', stream, group, me, ARGV[3], cursor,
                           'COUNT', count, 'JUSTID')
  next_cursor = found[1]
  for _, id in ipairs(found[2]) do
    local due = redis.call('ZSCORE', retries, id)
    if not due or tonumber(due) <= now then
      if due then redis.call('ZREM', retries, id) end
      take(id)
    end
  end
end
local first = redis.call('ZRANGE', retries, 0, 0, 'WITHSCORES')
local wait = -1
if first[1] then wait = math.max(0, tonumber(first[2]) - now) end
return {taken, next_cursor, wait}
""")

#: Schedule a retry: the event stays pending, due `delay` ms from now (server time).
#: KEYS: retries. ARGV: delay ms, entry id.
RETRY = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
""")

#: Keep events from being reclaimed while this consumer works on them: reset their
#: idle time (JUSTID: no delivery counted), for those still this consumer's.
#: KEYS: stream. ARGV: group, consumer, entry ids...
RENEW = Script("""
local kept = 0
for i = 3, #ARGV do
  if redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])[1] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
""")

#: A stopping consumer gives back what it holds: claimable at once by the group's other
#: consumers (IDLE). Events it never started get their delivery uncounted (RETRYCOUNT),
#: so the next one is the same attempt. Scheduled retries stay scheduled.
#: KEYS: stream, retries. ARGV: group, consumer, idle ms, ids of started events...
RELEASE = Script("""
local started = {}
for i = 4, #ARGV do started[ARGV[i]] = true end
local released = 0
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100000, ARGV[2])) do
  local id, count = p[1], p[4]
  if not redis.call('ZSCORE', KEYS[2], id) then
    if not started[id] and count > 0 then count = count - 1 end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id,
               'IDLE', ARGV[3], 'RETRYCOUNT', count, 'JUSTID')
    released = released + 1
  end
end
return released
""")

#: After a lost connection: events delivered to this consumer that it does not hold
#: (the reply to a read was lost), handed over again with their delivery count as is.
#: KEYS: stream, retries. ARGV: group, consumer, count, ids this consumer holds...
MINE = Script("""
local held = {}
for i = 4, #ARGV do held[ARGV[i]] = true end
local out = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[3], ARGV[2])) do
  local id = p[1]
  if not held[id] and not redis.call('ZSCORE', KEYS[2], id) then
    local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
    if entry then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
      out[#out + 1] = {id, entry[2], p[4]}
    else
      redis.call('XACK', KEYS[1], ARGV[1], id)
    end
  end
end
return out
""")

#: Dead-letter one event of one group: append the letter, ack the event there.
#: KEYS: stream, dead letters. ARGV: group, entry id, then the letter's fields and values.
DEAD = Script("""
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
""")

#: Send dead letters back to their group: a new entry (a first delivery) that carries
#: the group's name, so the topic's other groups skip it.
#: KEYS: dead letters, then the stream of each letter. ARGV: the letters' ids.
REPLAY = Script("""
local replayed = 0
for i, id in ipairs(ARGV) do
  local letter = redis.call('XRANGE', KEYS[1], id, id)[1]
  if letter then
    local f = {}
    for j = 1, #letter[2], 2 do f[letter[2][j]] = letter[2][j + 1] end
    if string.sub(f['topic'], 1, 7) == '_reply.' then
      redis.call('XADD', KEYS[i + 1], 'NOMKSTREAM', '*', 'event', f['event'], 'group', f['group'])
    else
      redis.call('XADD', KEYS[i + 1], '*', 'event', f['event'], 'group', f['group'])
    end
    redis.call('XDEL', KEYS[1], id)
    replayed = replayed + 1
  end
end
return replayed
""")

#: Housekeeping of one stream: trim the entries every group is done with (below the
#: oldest pending entry, or last delivered one, of every group), and forget consumers
#: that hold nothing and were not seen for a while (processes that died).
#: KEYS: stream. ARGV: forget after ms. Returns how many entries were trimmed.
TIDY = Script("""
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function lower(a, b)
  if not a then return b end
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if bms < ams or (bms == ams and bseq < aseq) then return b end
  return a
end
local function fields(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local floor = nil
for _, raw in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = fields(raw)
  local low = g['last-delivered-id']
  if g['pending'] > 0 then low = redis.call('XPENDING', KEYS[1], g['name'])[2] end
  floor = lower(floor, low)
  for _, rawc in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], g['name'])) do
    local c = fields(rawc)
    if c['pending'] == 0 and c['idle'] > tonumber(ARGV[1]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], g['name'], c['name'])
    end
  end
end
if floor then return redis.call('XTRIM', KEYS[1], 'MINID', '~', floor) end
return 0
""")
