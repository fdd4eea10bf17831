-- load_rotations.lua: the rotation hashes named in KEYS, in one call (read only).
--
-- Returns one flat field/value array per key ({} for a key that is gone). One
-- call instead of a pipeline of HGETALLs: the client's cost per pipelined command
-- was most of the time a timer batch of a thousand rotations took to load. The
-- keys of a book share its hash tag, so they live in one slot (Redis Cluster).
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HGETALL', key)
end
return out
