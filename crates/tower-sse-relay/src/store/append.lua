-- Appends entries to a stream, trims it, and refreshes its TTL: one round trip.
-- KEYS[1]: the stream. ARGV[1]: the most events kept (MAXLEN; the end marker
-- may be one entry more). ARGV[2]: the TTL in milliseconds. Then (id, field,
-- value) triples, ids increasing.
-- An id already present (an append retried after a timeout) is skipped, so
-- appending is idempotent. Returns the number of entries added.
local added = 0
local events = tonumber(ARGV[1])
for i = 3, #ARGV, 3 do
  local cap = events
  if ARGV[i + 1] == 'end' then
    cap = events + 1
  end
  local reply = redis.pcall('XADD', KEYS[1], 'MAXLEN', cap, ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then
      return redis.error_reply(reply.err)
    end
  else
    added = added + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return added
