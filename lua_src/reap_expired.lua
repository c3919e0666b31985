-- reap_expired: end leases whose lock passed; the job retries after its backoff or
-- fails when its attempts are used up. An active id without a job hash is dropped.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), max_reap (default 1000)
-- Reply    {"OK", count}
-- Errors   none
--@include base
--@include lanes
local now = now_or_server(ARGV[1])
local max_reap = to_int(ARGV[2] or "1000")

local ids = redis.call("ZRANGEBYSCORE", K_ACTIVE, "-inf", now, "LIMIT", 0, max_reap)
for _, job_id in ipairs(ids) do
  redis.call("ZREM", K_ACTIVE, job_id)
  local k_job = job_key(job_id)
  if redis.call("EXISTS", k_job) == 0 then
    left_active(job_id, "", now)
  else
    left_active(job_id, redis.call("HGET", k_job, "gid"), now)
    retry_or_fail(job_id, now)
  end
end
if #ids > 0 then stat_times(now) end
return {"OK", tostring(#ids)}
