-- heartbeat_batch (omniq-tasks extension): renew up to 1000 leases of one queue.
-- Unlike heartbeat (max(old lock, now) + timeout_ms), each new lock is now +
-- timeout_ms: a worker that beats every third of a lease keeps the lock between a
-- third and one lease ahead of the server clock, however long the job runs, so a
-- dead worker's job comes back one lease after its last beat. Sending it twice
-- does no harm.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), count, then count pairs of job_id, lease_token
-- Reply    {now_ms, then per lease in order: its new lock_until_ms, or the reason it
--          was not renewed (TOKEN_REQUIRED, TOKEN_MISMATCH, NOT_ACTIVE, BAD_JOB_ID)}
-- Errors   {"ERR", "BATCH_TOO_LARGE", "1000"}, {"ERR", "BAD_ARGS"}
--@include base
--@include lanes
local MAX_LEASES = 1000
local now = now_or_server(ARGV[1])
local count = to_int(ARGV[2])

if count > MAX_LEASES then return {"ERR", "BATCH_TOO_LARGE", tostring(MAX_LEASES)} end
if #ARGV < 2 + 2 * count then return {"ERR", "BAD_ARGS"} end

-- With maxmemory and noeviction, Redis refuses a script only at its first write,
-- and only when that write may grow memory (ZADD, HSET). Renewing a lease grows
-- nothing, and refusing it would let the reaper hand a running job to another
-- worker, so the first write is one that never grows memory.
redis.call("DEL", base .. ":oom-guard")

local out = {tostring(now)}
for i = 1, count do
  local job_id = ARGV[1 + 2 * i]
  local err
  if job_id == "" then err = "BAD_JOB_ID" else err = check_lease(job_id, ARGV[2 + 2 * i]) end
  if err then
    out[#out + 1] = err
  else
    local k_job = job_key(job_id)
    local timeout = to_int(redis.call("HGET", k_job, "timeout_ms"))
    if timeout <= 0 then timeout = DEFAULT_TIMEOUT_MS end
    local lock_until = now + timeout
    redis.call("ZADD", K_ACTIVE, lock_until, job_id)
    redis.call("HSET", k_job, "lock_until_ms", lock_until, "updated_ms", now)
    out[#out + 1] = tostring(lock_until)
  end
end
return out
