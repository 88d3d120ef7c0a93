-- Checks a request against every policy of its set and charges all of them
-- only if all admit it. One key per policy; all share the client's hash tag.
-- ARGV: nonce, n, then per policy: kind, capacity, period (us), cost.
-- Returns: allowed (0/1), then per policy: remaining, reset (us), retry (us).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nonce = ARGV[1]
local n = tonumber(ARGV[2])
local all = true
local out = {0}
local writes = {}

local function bucket(used, cap, period, cost)
  local tau = cap * period
  local after = used + cost * period
  local ok = after <= tau
  local held = used
  if ok then held = after end
  local retry = 0
  if not ok then retry = after - tau end
  return ok, math.floor((tau - math.min(held, tau)) / period), held, retry
end

for i = 1, n do
  local b = 2 + (i - 1) * 4
  local kind = tonumber(ARGV[b + 1])
  local cap = tonumber(ARGV[b + 2])
  local period = tonumber(ARGV[b + 3])
  local cost = tonumber(ARGV[b + 4])
  local key = KEYS[i]
  local ok, remaining, reset, retry
  if kind == 1 then
    local tat = tonumber(redis.call('GET', key)) or 0
    local used = math.max(tat, now) - now
    ok, remaining, reset, retry = bucket(used, cap, period, cost)
    writes[i] = {kind, key, now + used + cost * period, used + cost * period}
  elseif kind == 2 then
    local s = redis.call('HMGET', key, 'level', 'last')
    local level = tonumber(s[1]) or 0
    local last = tonumber(s[2]) or now
    level = math.max(0, level - math.max(0, now - last))
    ok, remaining, reset, retry = bucket(level, cap, period, cost)
    writes[i] = {kind, key, level + cost * period}
  elseif kind == 3 then
    local s = redis.call('HMGET', key, 'start', 'count')
    local start = now - (now % period)
    local count = 0
    if tonumber(s[1]) == start then count = tonumber(s[2]) or 0 end
    local left = start + period - now
    ok = count + cost <= cap
    local used = count
    if ok then used = count + cost end
    remaining = math.max(0, cap - used)
    reset = 0
    if used > 0 then reset = left end
    retry = 0
    if not ok then
      retry = left
      if cost > cap then retry = period end
    end
    writes[i] = {kind, key, start, count + cost, left}
  elseif kind == 4 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local sum = 0
    local costs = {}
    for j = 1, #entries, 2 do
      local c = tonumber(string.match(entries[j], ':(%d+)$')) or 0
      sum = sum + c
      costs[#costs + 1] = {tonumber(entries[j + 1]), c}
    end
    ok = sum + cost <= cap
    local used = sum
    if ok then used = sum + cost end
    remaining = math.max(0, cap - used)
    reset = 0
    if ok then
      reset = period
    elseif #costs > 0 then
      reset = costs[#costs][1] + period - now
    end
    retry = 0
    if not ok then
      retry = period
      if cost <= cap then
        local to_free = sum + cost - cap
        for j = 1, #costs do
          if costs[j][2] >= to_free then
            retry = costs[j][1] + period - now
            break
          end
          to_free = to_free - costs[j][2]
        end
      end
    end
    writes[i] = {kind, key, i}
  else
    local s = redis.call('HMGET', key, 'start', 'current', 'previous')
    local aligned = now - (now % period)
    local start = tonumber(s[1]) or aligned
    local current = tonumber(s[2]) or 0
    local previous = tonumber(s[3]) or 0
    if aligned == start + period then
      previous = current
      current = 0
      start = aligned
    elseif aligned ~= start then
      previous = 0
      current = 0
      start = aligned
    end
    local weight = math.max(0, math.min(1, (period - (now - start)) / period))
    local estimate = previous * weight + current
    ok = estimate + cost <= cap
    local used = estimate
    local cur_after = current
    if ok then
      used = estimate + cost
      cur_after = current + cost
    end
    remaining = math.max(0, math.floor(cap - used))
    reset = 0
    if cur_after > 0 then
      reset = start + 2 * period - now
    elseif previous > 0 then
      reset = start + period - now
    end
    retry = 0
    if not ok then
      if cost > cap then
        retry = period
      else
        local room = cap - cost
        local at
        if current <= room and previous > 0 then
          at = start + (1 - (room - current) / previous) * period
        else
          local x = 0
          if current > 0 then x = math.max(0, 1 - room / current) end
          at = start + period + x * period
        end
        retry = math.max(1, math.ceil(at - now))
      end
    end
    writes[i] = {kind, key, start, current + cost, previous, period}
  end
  if not ok then all = false end
  out[#out + 1] = remaining
  out[#out + 1] = math.floor(reset)
  out[#out + 1] = math.ceil(retry)
end

if all then
  out[1] = 1
  for i = 1, n do
    local w = writes[i]
    local kind = w[1]
    local key = w[2]
    if kind == 1 then
      redis.call('SET', key, w[3], 'PX', math.ceil(w[4] / 1000) + 1000)
    elseif kind == 2 then
      redis.call('HSET', key, 'level', w[3], 'last', now)
      redis.call('PEXPIRE', key, math.ceil(w[3] / 1000) + 1000)
    elseif kind == 3 then
      redis.call('HSET', key, 'start', w[3], 'count', w[4])
      redis.call('PEXPIRE', key, math.ceil(w[5] / 1000) + 1000)
    elseif kind == 4 then
      local b = 2 + (w[3] - 1) * 4
      local cost = tonumber(ARGV[b + 4])
      local period = tonumber(ARGV[b + 3])
      if cost > 0 then
        redis.call('ZADD', key, now, now .. ':' .. nonce .. ':' .. w[3] .. ':' .. cost)
      end
      redis.call('PEXPIRE', key, math.ceil(period / 1000) + 1000)
    else
      redis.call('HSET', key, 'start', w[3], 'current', w[4], 'previous', w[5])
      redis.call('PEXPIRE', key, math.ceil(2 * w[6] / 1000) + 1000)
    end
  end
end
return out
