-- reap: end leases whose lock passed; the job retries after its backoff or fails
-- when its attempts are used up. An active id without a job hash is dropped.
-- With note = true the job's last_error says its lease expired (reap_leases).
local function note_expired(k_job, f, now)
  redis.call("HSET", k_job, "last_error", "lease expired (lock_until_ms " .. (f[4] or "?") ..
    ", reaped at " .. now .. ") on attempt " .. (f[2] or "?") .. " of " .. (f[3] or "?") ..
    ": the worker running it died, hung or lost Redis before acking it", "last_error_ms", now)
end

local function reap(now, max_reap, note)
  local ids = redis.call("ZRANGEBYSCORE", K_ACTIVE, "-inf", now, "LIMIT", 0, max_reap)
  for _, job_id in ipairs(ids) do
    redis.call("ZREM", K_ACTIVE, job_id)
    local k_job = job_key(job_id)
    if redis.call("EXISTS", k_job) == 0 then
      left_active(job_id, "", now)
    else
      local f = redis.call("HMGET", k_job, "gid", "attempt", "max_attempts", "lock_until_ms")
      if note then note_expired(k_job, f, now) end
      left_active(job_id, f[1], now)
      retry_or_fail(job_id, now)
    end
  end
  if #ids > 0 then stat_times(now) end
  return #ids
end
