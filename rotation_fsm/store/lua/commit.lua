-- commit.lua: apply one batch of effects atomically, guarded by the book version.
--
-- KEYS[1]   the book's version key (a counter; missing counts as 0). Every other key
--           is named in the ops: all of a book's keys share its hash tag, so they
--           live in KEYS[1]'s slot, which is all Redis Cluster checks.
-- ARGV[1]   the version the effects were decided against
-- ARGV[2]   the batch, one JSON array: first the header
--             [decision stream, permit key prefix, block key prefix, plan key prefix,
--              permit EX seconds, block EX seconds]
--           then one record per op, of one of these kinds:
--             ["D", plan_id, [field, value, ...], permit, block, unblock]
--                 a decision entry; `permit` (JSON, or "") is SET under the permit
--                 key, `block` likewise under the block key; unblock 1 deletes the
--                 block key
--             ["P", plan_id, record, px]   the plan record, kept `px` ms
--             [COMMAND, key, arg, ...]     anything else: redis.call(COMMAND, key, ...)
--           An arg that is a number n means ARGV[n]: values JSON cannot carry (a
--           dead letter's invalid UTF-8) or would only escape (the audit body).
-- ARGV[3..] such values
-- Returns {1, new_version} when applied, {0, current_version} when the book moved
-- on since ARGV[1] (nothing applied: the caller reloads and decides again).
--
-- All or nothing: every op and every number in it is checked before the first
-- write. Redis does not roll a script back, so a value Redis would refuse half-way
-- (a TTL past its range, a score that is not a number) must be refused up front.
-- Known kinds are written directly (one decision = one record, no per-op tables):
-- decoding and interpreting generic ops cost more than the writes themselves.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local batch = cjson.decode(ARGV[2])
local head = batch[1]

local function fail(i, op, why)
  return redis.error_reply(string.format(
    'commit.lua: nothing written: op %d (%s %s): %s', i - 1, tostring(op[1]), tostring(op[2]), why))
end

-- A TTL: a positive decimal integer of at most 15 digits (31,000 years in ms).
local function ttl_ok(v)
  return type(v) == 'string' and string.find(v, '^[1-9]%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$') ~= nil
end
-- A count or a score as the engine writes them: a decimal integer of at most 16 digits.
local function int_ok(v)
  return type(v) == 'string' and string.find(v, '^%-?%d%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?%d?$') ~= nil
end
local function bound_ok(v)
  return v == '-inf' or v == '+inf' or int_ok(v)
end

local allowed = {
  XADD = true, XACK = true, SET = true, DEL = true, HSET = true, HDEL = true,
  ZADD = true, ZREM = true, ZREMRANGEBYSCORE = true, SADD = true, SREM = true, PEXPIRE = true,
}

-- Why a generic op would fail inside Redis, or nil when it is sound.
local function check(op)
  local cmd, n = op[1], #op
  if not allowed[cmd] then return 'command not allowed' end
  if type(op[2]) ~= 'string' then return 'no key' end
  for i = 3, n do
    local a = op[i]
    if type(a) == 'number' and ARGV[a] == nil then return 'missing ARGV ' .. a end
  end
  if cmd == 'SET' then
    if n < 3 then return 'no value' end
    local i = 4
    while i <= n do
      local o = op[i]
      if o == 'PX' or o == 'EX' then
        if not ttl_ok(op[i + 1]) then return o .. ' ' .. tostring(op[i + 1]) .. ' is not an integer in 1..10^15-1' end
        i = i + 2
      elseif o == 'KEEPTTL' or o == 'NX' or o == 'XX' then
        i = i + 1
      else
        return 'unknown SET option ' .. tostring(o)
      end
    end
  elseif cmd == 'PEXPIRE' then
    if n ~= 3 or not ttl_ok(op[3]) then return 'PEXPIRE ' .. tostring(op[3]) .. ' is not an integer in 1..10^15-1' end
  elseif cmd == 'ZADD' then
    if n < 4 or (n - 2) % 2 ~= 0 then return 'ZADD needs score/member pairs' end
    for i = 3, n, 2 do
      if not int_ok(op[i]) then return 'score ' .. tostring(op[i]) .. ' is not an integer of at most 16 digits' end
    end
  elseif cmd == 'ZREMRANGEBYSCORE' then
    if n ~= 4 or not bound_ok(op[3]) or not bound_ok(op[4]) then return 'bounds must be integers or -inf/+inf' end
  elseif cmd == 'XADD' then
    local i = 3
    if op[i] == 'MAXLEN' then
      i = i + 1
      if op[i] == '~' or op[i] == '=' then i = i + 1 end
      if not int_ok(op[i]) or string.sub(op[i], 1, 1) == '-' then return 'MAXLEN ' .. tostring(op[i]) .. ' is not a count' end
      i = i + 1
    end
    if op[i] ~= '*' then return 'XADD id must be *' end
    local fields = n - i
    if fields < 2 or fields % 2 ~= 0 then return 'XADD needs field/value pairs' end
  elseif cmd == 'HSET' then
    if n < 4 or (n - 2) % 2 ~= 0 then return 'HSET needs field/value pairs' end
  elseif n < 3 and cmd ~= 'DEL' then
    return 'no arguments'
  end
  return nil
end

if not ttl_ok(head[5]) or not ttl_ok(head[6]) then
  return redis.error_reply('commit.lua: nothing written: bad permit/block TTL')
end
for i = 2, #batch do
  local op = batch[i]
  local kind = op[1]
  if kind == 'D' then
    if type(op[2]) ~= 'string' or #op[3] < 2 or #op[3] % 2 ~= 0 then return fail(i, op, 'bad decision record') end
  elseif kind == 'P' then
    if not ttl_ok(op[4]) then return fail(i, op, 'PX ' .. tostring(op[4]) .. ' is not an integer in 1..10^15-1') end
  else
    local why = check(op)
    if why then return fail(i, op, why) end
  end
end

local call = redis.call
local decisions, permit_prefix, block_prefix, plan_prefix = head[1], head[2], head[3], head[4]
local permit_ex, block_ex = head[5], head[6]
for i = 2, #batch do
  local op = batch[i]
  local kind = op[1]
  if kind == 'D' then
    call('XADD', decisions, '*', unpack(op[3]))
    if op[4] ~= '' then call('SET', permit_prefix .. op[2], op[4], 'EX', permit_ex) end
    if op[5] ~= '' then call('SET', block_prefix .. op[2], op[5], 'EX', block_ex) end
    if op[6] == 1 then call('DEL', block_prefix .. op[2]) end
  elseif kind == 'P' then
    call('SET', plan_prefix .. op[2], op[3], 'PX', op[4])
  else
    local n = #op
    for j = 3, n do
      if type(op[j]) == 'number' then op[j] = ARGV[op[j]] end
    end
    call(op[1], unpack(op, 2, n))
  end
end
return {1, call('INCR', KEYS[1])}
