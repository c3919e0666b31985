-- enqueue: write one new job and put it in its lane. Returns "OK", "EXISTS" (the
-- job hash already exists: nothing changes, so publishing is idempotent) or
-- "READY" (queued and runnable now).
local function enqueue_one(job_id, payload, max_attempts, timeout_ms, backoff_ms, due_ms, gid, limit, now)
  local k_job = job_key(job_id)
  if redis.call("EXISTS", k_job) == 1 then return "EXISTS" end
  redis.call("HSET", k_job, "id", job_id, "payload", payload, "attempt", "0",
    "max_attempts", max_attempts, "timeout_ms", timeout_ms, "backoff_ms", backoff_ms,
    "created_ms", now, "queued_ms", now, "first_started_ms", "", "last_started_ms", "",
    "completed_ms", "", "failed_ms", "")
  if gid ~= "" then
    redis.call("HSET", k_job, "gid", gid)
    redis.call("SET", base .. ":has_groups", "1")
    if limit > 0 then redis.call("SET", group_key(gid, "limit"), limit, "NX") end
  end
  if due_ms > now then
    enter_delayed(job_id, due_ms, now)
    return "OK"
  end
  enter_wait(job_id, gid, now)
  return "READY"
end
