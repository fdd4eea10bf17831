-- The book's newest REST snapshot of the exchange account, shared by its replicas.
-- KEYS[1]  the snapshot hash (fields `as_of_ms`, `body`)
-- ARGV[1]  as_of_ms of this snapshot (the start of its REST request, ms)
-- ARGV[2]  body: the snapshot, JSON
-- ARGV[3]  how long the hash lives without a newer snapshot (ms)
-- Returns 1 when stored, 0 when the stored one is as new or newer (views only move forward).
local stored = tonumber(redis.call('HGET', KEYS[1], 'as_of_ms') or '0')
local as_of = tonumber(ARGV[1])
if as_of == nil or (stored ~= nil and stored >= as_of) then
  return 0
end
redis.call('HSET', KEYS[1], 'as_of_ms', ARGV[1], 'body', ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
