-- reap_expired: end leases whose lock passed; the job retries after its backoff or
-- fails when its attempts are used up. An active id without a job hash is dropped.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), max_reap (default 1000)
-- Reply    {"OK", count}
-- Errors   none
--@include base
--@include lanes
--@include reap
local now = now_or_server(ARGV[1])
local max_reap = to_int(ARGV[2] or "1000")
return {"OK", tostring(reap(now, max_reap, false))}
