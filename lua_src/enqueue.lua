-- enqueue: publish one job to its wait lane, its group's lane, or delayed.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     job_id, payload, max_attempts, timeout_ms, backoff_ms, now_ms ("0" = server
--          clock), due_ms (> now = delayed), gid ("" = ungrouped), group_limit (> 0 sets
--          the group's limit only if none is set yet), [wake_cap (omniq-tasks extension:
--          > 0 pushes a wake-up token to "{Q}:wake", keeping at most wake_cap)]
-- Reply    {"OK", job_id}; {"OK", job_id, "EXISTS"} when the job hash already exists
--          (idempotent publish: nothing changes)
-- Errors   {"ERR", "BAD_JOB_ID"} for an empty job id
--@include base
--@include lanes
--@include enqueue
local job_id = ARGV[1] or ""
local payload = ARGV[2] or ""
local max_attempts = to_int(ARGV[3] or "1")
local timeout_ms = to_int(ARGV[4] or "60000")
local backoff_ms = to_int(ARGV[5] or "5000")
local now = now_or_server(ARGV[6])
local due_ms = to_int(ARGV[7])
local gid = ARGV[8] or ""
local limit = to_int(ARGV[9])
local wake_cap = to_int(ARGV[10])

if job_id == "" then return {"ERR", "BAD_JOB_ID"} end
local outcome = enqueue_one(job_id, payload, max_attempts, timeout_ms, backoff_ms, due_ms, gid, limit, now)
if outcome == "EXISTS" then return {"OK", job_id, "EXISTS"} end
stat_times(now, "last_enqueue_ms")
if outcome == "READY" then wake_workers(1, wake_cap) end
return {"OK", job_id}
