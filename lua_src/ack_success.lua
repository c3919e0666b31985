-- ack_success: a leased job finished; it moves to completed (newest 100 kept).
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     job_id, now_ms ("0" = server clock), lease_token
-- Reply    {"OK"}
-- Errors   TOKEN_REQUIRED, TOKEN_MISMATCH, NOT_ACTIVE
--@include base
--@include lanes
local job_id = ARGV[1] or ""
local now = now_or_server(ARGV[2])
local token = ARGV[3]

local err, gid = check_lease(job_id, token, true)
if err then return {"ERR", err} end

left_active(job_id, gid, now)
enter_completed(job_id, now, true)
stat_times(now, "last_finish_ms")
return {"OK"}
