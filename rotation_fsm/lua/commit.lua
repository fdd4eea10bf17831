-- commit.lua: apply one batch of effects atomically, guarded by the book version.
--
-- KEYS[1]   the book's version key (a counter; missing counts as 0)
-- KEYS[2..] every key the ops touch (declared, so Redis Cluster can check the slot)
-- ARGV[1]   the version the effects were decided against
-- ARGV[2]   the ops, as one JSON array: each op is [COMMAND, key-index, arg, ...]
--           and runs as redis.call(COMMAND, KEYS[key-index], arg, ...). An arg is a
--           string, or a number n meaning ARGV[n] — for binary values (a dead
--           letter's invalid UTF-8) that JSON cannot carry.
-- ARGV[3..] binary args referenced from the ops
-- Returns {1, new_version} when applied, {0, current_version} when the book moved
-- on since ARGV[1] (nothing applied: the caller reloads and decides again).
--
-- One JSON argument instead of thousands of separate ones: packing each argument
-- in redis-py cost more than the whole commit inside Redis.
local allowed = {
  XADD = true, XACK = true, SET = true, DEL = true, HSET = true, HDEL = true,
  ZADD = true, ZREM = true, ZREMRANGEBYSCORE = true, SADD = true, SREM = true, PEXPIRE = true, PERSIST = true,
}
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local ops = cjson.decode(ARGV[2])
-- Validate every op before running any, so a malformed batch changes nothing.
for _, op in ipairs(ops) do
  if not allowed[op[1]] then
    return redis.error_reply('commit.lua: command not allowed: ' .. tostring(op[1]))
  end
end
for _, op in ipairs(ops) do
  local args = {}
  for i = 3, #op do
    local a = op[i]
    if type(a) == 'number' then a = ARGV[a] end
    args[i - 2] = a
  end
  redis.call(op[1], KEYS[op[2]], unpack(args))
end
return {1, redis.call('INCR', KEYS[1])}
