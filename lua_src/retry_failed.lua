-- retry_failed: put a failed job back in its wait lane, attempt reset to 0.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     job_id, now_ms ("0" = server clock)
-- Reply    {"OK"}
-- Errors   NO_JOB, NOT_FAILED
--@include base
--@include lanes
--@include retry
local job_id = ARGV[1] or ""
local now = now_or_server(ARGV[2])

local reason = retry_one(job_id, now)
if reason then return {"ERR", reason} end
stat_times(now)
return {"OK"}
