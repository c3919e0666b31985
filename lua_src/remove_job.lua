-- remove_job: delete a job that is not running from the lane it sits in.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     job_id, lane (wait | gwait | delayed | failed | completed),
--          [now_ms] (extension; "0" or missing = server clock)
-- Reply    {"OK"}; the job hash is deleted
-- Errors   NO_JOB, ACTIVE, LANE_MISMATCH (also for an unknown lane), NOT_IN_LANE
--@include base
--@include lanes
--@include remove
local job_id = ARGV[1] or ""
local lane = ARGV[2] or ""
local now = now_or_server(ARGV[3])

local reason = remove_one(job_id, lane, now)
if reason then return {"ERR", reason} end
stat_times(now)
return {"OK"}
