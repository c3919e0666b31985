-- results (omniq-tasks extension): return values stored by ack_success_batch,
-- and the wake-up of callers waiting in handle.get().
--   {Q}:result:<id>   STRING the return value as JSON (or a "!" marker), PX = its TTL
--   {Q}:watching      ZSET   ids someone waits on, score = until when (ms)
--   {Q}:done:<id>     LIST   a wake-up token for the waiters of <id> (short TTL)
-- Nobody waiting (the usual case) costs one EXISTS per call, not per job.
local NOTIFY_TTL_MS = 60000

local function result_key(job_id) return base .. ":result:" .. job_id end

-- The results section after the replay tag: a count of TTL groups, then per group
-- its TTL in ms, how many results it holds and, per result, its lease's position
-- (1-based) and payload. Returns position -> ARGV index of the payload and
-- position -> TTL (the ARGV string, as SET takes it), or nil when the section is
-- malformed. (Indexes, not copies: nothing per result is built but two numbers.)
local function read_results(first, count)
  local at, ttls = {}, {}
  local a = first + 1
  for _ = 1, to_int(ARGV[first]) do
    local ttl, k = ARGV[a], to_int(ARGV[a + 1])
    if not ttl or not string.match(ttl, "^[1-9]%d*$") or k < 0 or #ARGV < a + 1 + 2 * k then return nil end
    for j = 1, k do
      local pos = to_int(ARGV[a + 2 * j])
      if pos < 1 or pos > count then return nil end
      at[pos] = a + 2 * j + 1
      ttls[pos] = ttl
    end
    a = a + 2 + 2 * k
  end
  return at, ttls
end

-- Wake the waiters of the ids in done (acked now), if any are watched.
local function notify_done(done, now)
  if #done == 0 then return end
  local k_watching = base .. ":watching"
  if redis.call("EXISTS", k_watching) == 0 then return end
  redis.call("ZREMRANGEBYSCORE", k_watching, "-inf", "(" .. now)  -- waiters long gone
  for _, job_id in ipairs(done) do
    if redis.call("ZSCORE", k_watching, job_id) then
      redis.call("ZREM", k_watching, job_id)
      local k_done = base .. ":done:" .. job_id
      redis.call("RPUSH", k_done, "1")
      redis.call("PEXPIRE", k_done, NOTIFY_TTL_MS)
    end
  end
end
