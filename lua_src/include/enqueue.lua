-- enqueue: write one new job and put it in its lane. Returns "OK", "EXISTS" (the
-- job hash already exists: nothing changes, so publishing is idempotent) or
-- "READY" (queued and runnable now).
local function enqueue_one(job_id, payload, max_attempts, timeout_ms, backoff_ms, due_ms, gid, limit, now)
  local k_job = job_key(job_id)
  if redis.call("EXISTS", k_job) == 1 then return "EXISTS" end
  redis.call("HSET", k_job, "id", job_id, "payload", payload, "state", "wait", "attempt", "0",
    "max_attempts", max_attempts, "timeout_ms", timeout_ms, "backoff_ms", backoff_ms,
    "created_ms", now, "updated_ms", now, "queued_ms", now, "first_started_ms", "",
    "last_started_ms", "", "completed_ms", "", "failed_ms", "")
  if gid ~= "" then
    redis.call("HSET", k_job, "gid", gid)
    redis.call("SET", base .. ":has_groups", "1")
    if limit > 0 then redis.call("SET", group_key(gid, "limit"), limit, "NX") end
  end
  if due_ms > now then
    enter_delayed(job_id, due_ms, now)
    return "OK"
  end
  enter_wait(job_id, gid, now, true)
  return "READY"
end

-- One token per ready job, keeping at most wake_cap in "{Q}:wake": idle omniq-tasks
-- workers block on that list, so that many of them start at once.
local function wake_workers(ready, wake_cap)
  if ready <= 0 or wake_cap <= 0 then return end
  local k_wake = base .. ":wake"
  local room = wake_cap - redis.call("LLEN", k_wake)
  for _ = 1, math.min(room, ready) do redis.call("RPUSH", k_wake, "1") end
end
