-- reap_leases (omniq-tasks extension): reap_expired that also says why in each job's
-- last_error ("lease expired ... on attempt N of M"), so a job whose worker died
-- every time does not end failed with an empty last_error.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), max_reap (default 1000)
-- Reply    {"OK", count}
-- Errors   none
--@include base
--@include lanes
--@include reap
local now = now_or_server(ARGV[1])
local max_reap = to_int(ARGV[2] or "1000")
return {"OK", tostring(reap(now, max_reap, true))}
