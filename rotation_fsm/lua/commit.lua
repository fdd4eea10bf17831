-- commit.lua: apply one batch of effects atomically, guarded by the book version.
--
-- KEYS[1]  the book's version key (a counter; missing counts as 0)
-- KEYS[2..] every key the ops below touch (ops name them by index into KEYS)
-- ARGV[1]  the version the effects were decided against
-- ARGV[2..] ops, each: COMMAND, key-index, n, arg1 .. argn
--           COMMAND is one of the allow-listed Redis commands below; it runs as
--           redis.call(COMMAND, KEYS[key-index], arg1 .. argn)
-- Returns {1, new_version} when applied, {0, current_version} when the book moved
-- on since ARGV[1] (nothing applied: the caller reloads and decides again).
local allowed = {
  XADD = true, XACK = true, SET = true, DEL = true, HSET = true, HDEL = true,
  ZADD = true, ZREM = true, SADD = true, SREM = true, PEXPIRE = true, PERSIST = true,
}
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
-- Validate every op before running any, so a malformed batch changes nothing.
local i = 2
while i <= #ARGV do
  if not allowed[ARGV[i]] then
    return redis.error_reply('commit.lua: command not allowed: ' .. tostring(ARGV[i]))
  end
  i = i + 3 + tonumber(ARGV[i + 2])
end
i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  redis.call(ARGV[i], KEYS[tonumber(ARGV[i + 1])], unpack(ARGV, i + 3, i + 2 + n))
  i = i + 3 + n
end
return {1, redis.call('INCR', KEYS[1])}
