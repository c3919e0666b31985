-- ack_fail: a leased job raised; retry after backoff_ms or fail for good.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     job_id, now_ms ("0" = server clock), lease_token, [error text, at most
--          4096 bytes kept as last_error], [final: "1" = fail now, no retry
--          (omniq-tasks extension, for jobs that can never succeed)]
-- Reply    {"RETRY", due_ms} (due = now + backoff_ms) | {"FAILED"} when attempt >= max_attempts
-- Errors   TOKEN_REQUIRED, TOKEN_MISMATCH, NOT_ACTIVE
--@include base
--@include lanes
local job_id = ARGV[1] or ""
local now = now_or_server(ARGV[2])
local token = ARGV[3]
local error_text = ARGV[4] or ""
local final = ARGV[5] == "1"

local err, gid = check_lease(job_id, token, true)
if err then return {"ERR", err} end

local due = fail_lease(job_id, gid, error_text, now, final)
stat_times(now, "last_finish_ms")
if due then return {"RETRY", tostring(due)} end
return {"FAILED"}
