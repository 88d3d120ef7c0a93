-- Charges `amount` more, or gives it back (refund = 1), for one policy;
-- never refuses. ARGV: nonce, kind, capacity, period (us), amount, refund.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local nonce = ARGV[1]
local kind = tonumber(ARGV[2])
local period = tonumber(ARGV[4])
local amount = tonumber(ARGV[5])
local refund = ARGV[6] == '1'
if kind == 1 then
  local tat = math.max(tonumber(redis.call('GET', key)) or 0, now)
  if refund then tat = math.max(now, tat - amount * period) else tat = tat + amount * period end
  if tat > now then
    redis.call('SET', key, tat, 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', key)
  end
elseif kind == 2 then
  local s = redis.call('HMGET', key, 'level', 'last')
  local level = tonumber(s[1]) or 0
  local last = tonumber(s[2]) or now
  level = math.max(0, level - math.max(0, now - last))
  if refund then level = math.max(0, level - amount * period) else level = level + amount * period end
  redis.call('HSET', key, 'level', level, 'last', now)
  redis.call('PEXPIRE', key, math.ceil(level / 1000) + 1000)
elseif kind == 3 or kind == 5 then
  local field = 'count'
  if kind == 5 then field = 'current' end
  local aligned = now - (now % period)
  local start = tonumber(redis.call('HGET', key, 'start'))
  if start ~= aligned then
    -- The request's window is over: nothing to adjust in it.
    return 0
  end
  local v = tonumber(redis.call('HGET', key, field)) or 0
  if refund then v = math.max(0, v - amount) else v = v + amount end
  redis.call('HSET', key, field, v)
elseif kind == 4 then
  if refund then
    local left = amount
    while left > 0 do
      local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      if #newest == 0 then break end
      local c = tonumber(string.match(newest[1], ':(%d+)$')) or 0
      redis.call('ZREM', key, newest[1])
      if c > left then
        redis.call('ZADD', key, newest[2], newest[2] .. ':' .. nonce .. ':r:' .. (c - left))
        left = 0
      else
        left = left - c
      end
    end
  elseif amount > 0 then
    redis.call('ZADD', key, now, now .. ':' .. nonce .. ':a:' .. amount)
    redis.call('PEXPIRE', key, math.ceil(period / 1000) + 1000)
  end
end
return 1
