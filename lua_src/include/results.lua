-- results (omniq-tasks extension): return values stored by ack_success_batch,
-- and the wake-up of callers waiting in handle.get().
--   {Q}:result:<id>   STRING the return value as JSON (or a "!" marker), PX = its TTL
--   {Q}:watching      ZSET   ids someone waits on, score = until when (ms)
--   {Q}:done:<id>     LIST   a wake-up token for the waiters of <id> (short TTL)
-- Nobody waiting (the usual case) costs one EXISTS per call, not per job.
local NOTIFY_TTL_MS = 60000

local function result_key(job_id) return base .. ":result:" .. job_id end

-- The results section after the replay tag: a count, then per result its lease's
-- position (1-based), TTL in ms and payload. Returns position -> {ttl, payload},
-- or nil when the section is malformed.
local function read_results(first, count)
  local n = to_int(ARGV[first])
  local out = {}
  if n <= 0 then return out end
  if #ARGV < first + 3 * n then return nil end
  for r = 0, n - 1 do
    local pos = to_int(ARGV[first + 1 + 3 * r])
    local ttl = to_int(ARGV[first + 2 + 3 * r])
    if pos < 1 or pos > count or ttl <= 0 then return nil end
    out[pos] = {ttl, ARGV[first + 3 + 3 * r]}
  end
  return out
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
