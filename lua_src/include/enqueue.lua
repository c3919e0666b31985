-- enqueue: write one new job and put it in its lane. Returns "OK", "EXISTS" (the
-- job hash already exists: nothing changes, so publishing is idempotent) or
-- "READY" (queued and runnable now). With a `later` list, a ready ungrouped job's
-- id is appended there instead, for enter_wait_many to queue them all at once.
local function enqueue_one(job_id, payload, max_attempts, timeout_ms, backoff_ms, due_ms, gid, limit, now, later)
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
    -- A limit this publish set can give waiting jobs of the group room now.
    if gid ~= "" and limit > 0 then group_ready_if_room(gid, now) end
    return "OK"
  end
  if later and gid == "" then
    later[#later + 1] = job_id
  else
    enter_wait(job_id, gid, now, true)
  end
  return "READY"
end

-- What enter_wait does for each of many ungrouped ids, whose hashes already say
-- state "wait": one RPUSH and one ZADD for them all, in their order.
local function enter_wait_many(ids, now)
  for first = 1, #ids, 500 do
    local last = math.min(first + 499, #ids)
    local scored = {}
    for i = first, last do
      scored[#scored + 1] = now
      scored[#scored + 1] = ids[i]
    end
    redis.call("RPUSH", K_WAIT, unpack(ids, first, last))
    redis.call("ZADD", idx_key("wait"), unpack(scored))
  end
  stat_add("waiting", #ids)
  stat_add("waiting_total", #ids)
end

-- One token per ready job, keeping at most wake_cap in "{Q}:wake": idle omniq-tasks
-- workers block on that list, so that many of them start at once.
local function wake_workers(ready, wake_cap)
  if ready <= 0 or wake_cap <= 0 then return end
  local k_wake = base .. ":wake"
  local room = wake_cap - redis.call("LLEN", k_wake)
  for _ = 1, math.min(room, ready) do redis.call("RPUSH", k_wake, "1") end
end
