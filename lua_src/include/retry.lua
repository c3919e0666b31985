-- retry: put one failed job back in its wait lane with its attempts reset.
-- Returns nil on success or the reason word.
local function retry_one(job_id, now)
  local k_job = job_key(job_id)
  local state = redis.call("HGET", k_job, "state")
  if not state then return "NO_JOB" end
  if state ~= "failed" then return "NOT_FAILED" end
  redis.call("LREM", K_FAILED, 0, job_id)
  redis.call("ZREM", idx_key("failed"), job_id)
  stat_add("failed", -1)
  redis.call("HSET", k_job, "attempt", "0", "lease_token", "", "lock_until_ms", "",
    "due_ms", "", "failed_ms", "")
  enter_wait(job_id, redis.call("HGET", k_job, "gid") or "", now)
  return nil
end
