//! The scripts that change the room in Redis. Each is [`LIB`] (the keys, and the steps several
//! share: append an event with the next id, note a join or leave for the next `presence` event,
//! flush those, close a stream on another node, take from a rate bucket) followed by the one
//! call it makes. A script runs atomically in Redis: no other client's command runs between its
//! steps, so two nodes can never take one id, one name, or one expiry.
//!
//! Every script gets `ARGV[1..4]`: the key prefix, the node's floor (the highest id it has seen:
//! a Redis that lost its data and counts from 1 again still gives ids above what clients hold),
//! `--history`, and a fresh random word that becomes the epoch if none is set (Redis lost its
//! data, or the room is new). Its own arguments follow from `ARGV[5]`.
//!
//! The stream's entries: an event `N-0` (N its id, dense: every integer is an event) with `k`
//! its kind and its fields (`message`: `f` sender's selector, `n` name, `t` text, `ts` unix
//! ms; `presence`: `j` joined names, `l` names that left, `r` their reasons, each list joined
//! with a line feed, which no name holds; `rename`: `s` selector, `a` from, `b` to); and a
//! control entry `N-M` (M > 0, after event N) of kind `kick`: close stream `c` of session `s`
//! on node `n` for reason `r`, name `m`. Control entries take no id of their own, so the SSE
//! ids members see stay every integer.

use std::sync::LazyLock;

use ::redis::Script;

/// What every script starts with.
pub(crate) const LIB: &str = r#"
local P, FLOOR, HIST, EPOCH = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local SEQ, EVENTS, EPOCHK = P .. 'chat:seq', P .. 'chat:events', P .. 'chat:epoch'
local NAMES, USERS = P .. 'chat:names', P .. 'chat:users'
local ANN, DL = P .. 'chat:announced', P .. 'chat:deadlines'
local PJ, PL, PM = P .. 'chat:pending:joined', P .. 'chat:pending:left', P .. 'chat:pending:names'
local function skey(sel) return P .. 'chat:s:' .. sel end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function same_token(stored, token)
  return stored and stored == redis.sha1hex(token)
end
-- Appends an event with the next id; trims the stream to the last HIST events.
local function append(fields)
  if redis.call('EXISTS', EPOCHK) == 0 then redis.call('SET', EPOCHK, EPOCH) end
  local id = redis.call('INCR', SEQ)
  if id <= FLOOR then
    id = FLOOR + 1
    redis.call('SET', SEQ, id)
  end
  local keep = id - HIST + 1
  if keep < 1 then keep = 1 end
  redis.call('XADD', EVENTS, 'MINID', '=', keep .. '-0', id .. '-0', unpack(fields))
  return id
end
-- Tells the node holding stream `serial` of session `sel` to close it: a control entry.
local function kick(sel, node, serial, reason, name)
  local top = redis.call('GET', SEQ) or '0'
  redis.call('XADD', EVENTS, top .. '-*', 'k', 'kick', 's', sel, 'n', node, 'c', serial,
             'r', reason, 'm', name)
end
-- The joins and leaves noted so far as one presence event; the announced set follows it.
local function flush()
  if redis.call('SCARD', PM) == 0 then return nil end
  local joined = redis.call('LRANGE', PJ, 0, -1)
  local left = redis.call('LRANGE', PL, 0, -1)
  redis.call('DEL', PJ, PL, PM)
  local names, why = {}, {}
  for i, e in ipairs(left) do
    local cut = string.find(e, '\n', 1, true)
    names[i] = string.sub(e, 1, cut - 1)
    why[i] = string.sub(e, cut + 1)
  end
  for _, n in ipairs(joined) do redis.call('ZADD', ANN, 0, n) end
  for _, n in ipairs(names) do redis.call('ZREM', ANN, n) end
  return append({'k', 'presence', 'j', table.concat(joined, '\n'),
                 'l', table.concat(names, '\n'), 'r', table.concat(why, '\n')})
end
-- Notes a join (why false) or a leave for the next presence event: a name at most once an
-- event (a second change of it flushes the first), at most 256 names an event.
local function note(name, why)
  if redis.call('SISMEMBER', PM, name) == 1 then flush() end
  redis.call('SADD', PM, name)
  if why then redis.call('RPUSH', PL, name .. '\n' .. why) else redis.call('RPUSH', PJ, name) end
  if redis.call('SCARD', PM) >= 256 then flush() end
end
-- Takes one from the session's token bucket at `now`: nil, or the ms to wait for one.
local function take(S, tokens, last, now, rate, burst)
  tokens = tonumber(tokens) or burst
  last = tonumber(last) or now
  local elapsed = (now - last) / 1000
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate)
  if tokens >= 1 then
    redis.call('HSET', S, 'bucket', tostring(tokens - 1), 'bucket_ms', now)
    return nil
  end
  redis.call('HSET', S, 'bucket', tostring(tokens), 'bucket_ms', now)
  return math.ceil((1 - tokens) / rate * 1000)
end

local function join(name, fold, sel, token, max, grace, burst)
  local S = skey(sel)
  local had = redis.call('HMGET', S, 'token', 'after')
  if had[1] then
    -- The token is new at every join: the same one is this join sent again (its first reply
    -- was lost with a dead connection), which changes nothing.
    if same_token(had[1], token) then return {'ok', had[2]} end
    return {'collision'}
  end
  if redis.call('HEXISTS', NAMES, fold) == 1 then return {'taken'} end
  if redis.call('HLEN', NAMES) >= max then return {'full'} end
  note(name, false)
  local now = now_ms()
  local after = redis.call('GET', SEQ) or '0'
  redis.call('HSET', NAMES, fold, sel)
  redis.call('HSET', S, 'token', redis.sha1hex(token), 'name', name, 'fold', fold,
             'after', after, 'bucket', burst, 'bucket_ms', now, 'attached', '0',
             'node', '', 'serial', '')
  redis.call('ZADD', USERS, 0, name)
  redis.call('ZADD', DL, now + grace, sel)
  return {'ok', after}
end

local function attach(sel, token, node, serial, lease, n, expect)
  local S = skey(sel)
  local s = redis.call('HMGET', S, 'token', 'name', 'after', 'attached', 'node', 'serial')
  if not same_token(s[1], token) then return {'unauthorized'} end
  if expect ~= '' and s[2] ~= expect then return {'forbidden'} end
  if s[5] and s[5] ~= '' and s[5] ~= node then kick(sel, s[5], s[6], 'replaced', s[2]) end
  redis.call('HSET', S, 'attached', '1', 'node', node, 'serial', serial)
  redis.call('ZADD', DL, now_ms() + lease, sel)
  local first = redis.call('ZRANGE', ANN, 0, n - 1)
  return {'ok', s[2], s[3], s[4], redis.call('GET', SEQ) or '0', redis.call('ZCARD', ANN),
          redis.call('GET', EPOCHK) or '', first}
end

local function post(sel, token, bad, text, rate, burst, req)
  local S = skey(sel)
  local s = redis.call('HMGET', S, 'token', 'name', 'bucket', 'bucket_ms', 'req', 'res')
  if not same_token(s[1], token) then return {'unauthorized'} end
  -- This post sent again (its reply was lost with a dead connection): its id, once.
  if s[5] == req then return {'ok', tonumber(s[6])} end
  if bad ~= '0' then return {'invalid'} end
  local now = now_ms()
  local wait = take(S, s[3], s[4], now, rate, burst)
  if wait then return {'rate', wait} end
  flush()
  local id = append({'k', 'message', 'f', sel, 'n', s[2], 't', text, 'ts', now})
  redis.call('HSET', S, 'req', req, 'res', id)
  return {'ok', id}
end

local function rename(sel, token, bad, to, fold, rate, burst, req)
  local S = skey(sel)
  local s = redis.call('HMGET', S, 'token', 'name', 'fold', 'bucket', 'bucket_ms', 'req', 'res')
  if not same_token(s[1], token) then return {'unauthorized'} end
  if s[6] == req then return {'ok', s[7]} end
  if bad ~= '0' then return {'invalid'} end
  local wait = take(S, s[4], s[5], now_ms(), rate, burst)
  if wait then return {'rate', wait} end
  local owner = redis.call('HGET', NAMES, fold)
  if owner and owner ~= sel then return {'taken'} end
  local from = s[2]
  if from == to then return {'ok', from} end
  flush()
  if redis.call('HGET', NAMES, s[3]) == sel then redis.call('HDEL', NAMES, s[3]) end
  redis.call('HSET', NAMES, fold, sel)
  redis.call('HSET', S, 'name', to, 'fold', fold, 'req', req, 'res', from)
  redis.call('ZREM', USERS, from)
  redis.call('ZADD', USERS, 0, to)
  redis.call('ZREM', ANN, from)
  redis.call('ZADD', ANN, 0, to)
  append({'k', 'rename', 's', sel, 'a', from, 'b', to})
  return {'ok', from}
end

local function leave(sel, token, node)
  local S = skey(sel)
  local GONE = P .. 'chat:left:' .. sel
  local s = redis.call('HMGET', S, 'token', 'name', 'fold', 'node', 'serial')
  if not same_token(s[1], token) then
    -- This leave sent again (its reply was lost with a dead connection): what it answered.
    local g = redis.call('HMGET', GONE, 'token', 'name', 'node', 'serial')
    if same_token(g[1], token) then return {'ok', g[2], g[3], g[4]} end
    return {'unauthorized'}
  end
  redis.call('DEL', S)
  redis.call('HSET', GONE, 'token', s[1], 'name', s[2], 'node', s[4] or '', 'serial', s[5] or '')
  redis.call('PEXPIRE', GONE, 60000)
  if redis.call('HGET', NAMES, s[3]) == sel then redis.call('HDEL', NAMES, s[3]) end
  redis.call('ZREM', USERS, s[2])
  redis.call('ZREM', DL, sel)
  if s[4] and s[4] ~= '' and s[4] ~= node then kick(sel, s[4], s[5], 'left', s[2]) end
  note(s[2], 'left')
  return {'ok', s[2], s[4] or '', s[5] or ''}
end

-- For each (selector, serial) pair from ARGV[first]: if that stream of this node is still the
-- session's, `detach` gives the session its grace (`ms` from now) and forgets the stream;
-- otherwise (renewal) it moves the session's deadline to `ms` from now.
local function streams(node, ms, first, detach)
  local deadline = now_ms() + ms
  for i = first, #ARGV - 1, 2 do
    local sel, serial = ARGV[i], ARGV[i + 1]
    local S = skey(sel)
    local s = redis.call('HMGET', S, 'node', 'serial')
    if s[1] == node and s[2] == serial then
      if detach then redis.call('HSET', S, 'node', '', 'serial', '') end
      redis.call('ZADD', DL, 'XX', deadline, sel)
    end
  end
  return 0
end

-- The housekeeping tick: with `sweep`, claims up to 256 sessions whose deadline has passed
-- (the ZREM is the claim: one caller, once), each a leave with reason timeout; then announces
-- what was noted. Returns the sessions now and the names claimed.
local function tick(sweep)
  local claimed = {}
  if sweep == '1' then
    local due = redis.call('ZRANGEBYSCORE', DL, '-inf', now_ms(), 'LIMIT', 0, 256)
    for _, sel in ipairs(due) do
      if redis.call('ZREM', DL, sel) == 1 then
        local S = skey(sel)
        local s = redis.call('HMGET', S, 'name', 'fold', 'node', 'serial')
        redis.call('DEL', S)
        if s[1] then
          if redis.call('HGET', NAMES, s[2]) == sel then redis.call('HDEL', NAMES, s[2]) end
          redis.call('ZREM', USERS, s[1])
          if s[3] and s[3] ~= '' then kick(sel, s[3], s[4], 'expired', s[1]) end
          note(s[1], 'timeout')
          claimed[#claimed + 1] = s[1]
        end
      end
    end
  end
  flush()
  return {redis.call('ZCARD', USERS), claimed}
end

local function users(after, limit)
  local min = '-'
  if after ~= '' then min = '(' .. after end
  return {redis.call('ZRANGE', USERS, min, '+', 'BYLEX', 'LIMIT', 0, limit),
          redis.call('ZCARD', USERS), redis.call('GET', SEQ) or '0'}
end

local function epoch()
  if redis.call('EXISTS', EPOCHK) == 0 then redis.call('SET', EPOCHK, EPOCH) end
  return {redis.call('GET', EPOCHK), redis.call('GET', SEQ) or '0'}
end
"#;

fn script(call: &str) -> Script {
    Script::new(&format!("{LIB}\n{call}\n"))
}

/// `ARGV[5..11]`: name, fold, selector, token, `--max-members`, grace ms, `--burst`.
pub(crate) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        "return join(ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), \
         ARGV[11])",
    )
});

/// A join, then an attach of the new session (`GET /chat/stream?name=`): [`JOIN`]'s arguments,
/// then node, serial, lease ms, welcome names.
pub(crate) static JOIN_ATTACH: LazyLock<Script> = LazyLock::new(|| {
    script(
        "local r = join(ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), \
         tonumber(ARGV[10]), ARGV[11]) \
         if r[1] ~= 'ok' then return r end \
         return attach(ARGV[7], ARGV[8], ARGV[12], ARGV[13], tonumber(ARGV[14]), \
         tonumber(ARGV[15]), '')",
    )
});

/// `ARGV[5..11]`: selector, token, node, serial, lease ms, welcome names, the name the
/// session must have (empty: any).
pub(crate) static ATTACH: LazyLock<Script> = LazyLock::new(|| {
    script(
        "return attach(ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), \
         ARGV[11])",
    )
});

/// `ARGV[5..11]`: selector, token, whether the text is bad (`0`: no), text, `--rate`, `--burst`,
/// the request's own word (the same when it is sent again).
pub(crate) static POST: LazyLock<Script> = LazyLock::new(|| {
    script(
        "return post(ARGV[5], ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10]), \
         ARGV[11])",
    )
});

/// `ARGV[5..12]`: selector, token, whether the name is bad, new name, its fold, rate, burst,
/// the request's own word.
pub(crate) static RENAME: LazyLock<Script> = LazyLock::new(|| {
    script(
        "return rename(ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], tonumber(ARGV[10]), \
         tonumber(ARGV[11]), ARGV[12])",
    )
});

/// `ARGV[5..7]`: selector, token, node.
pub(crate) static LEAVE: LazyLock<Script> =
    LazyLock::new(|| script("return leave(ARGV[5], ARGV[6], ARGV[7])"));

/// `ARGV[5..6]`: node, grace ms; then (selector, serial) pairs.
pub(crate) static DETACH: LazyLock<Script> =
    LazyLock::new(|| script("return streams(ARGV[5], tonumber(ARGV[6]), 7, true)"));

/// `ARGV[5..6]`: node, lease ms; then (selector, serial) pairs.
pub(crate) static RENEW: LazyLock<Script> =
    LazyLock::new(|| script("return streams(ARGV[5], tonumber(ARGV[6]), 7, false)"));

/// `ARGV[5]`: `1` to claim expired sessions, `0` only to announce.
pub(crate) static TICK: LazyLock<Script> = LazyLock::new(|| script("return tick(ARGV[5])"));

/// `ARGV[5..6]`: after (empty: from the first), how many.
pub(crate) static USERS: LazyLock<Script> =
    LazyLock::new(|| script("return users(ARGV[5], tonumber(ARGV[6]))"));

/// The epoch (set if missing) and the last id.
pub(crate) static EPOCH: LazyLock<Script> = LazyLock::new(|| script("return epoch()"));
