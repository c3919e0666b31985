-- enqueue_tick (omniq-tasks extension): publish one tick of a periodic schedule, at
-- most once per tick whichever scheduler sends it (docs/periodic.md).
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     schedule name, tick_ms (the tick's time, epoch ms), marker_ttl_ms (> 0),
--          then the job as enqueue takes it: job_id, payload, max_attempts,
--          timeout_ms, backoff_ms, gid ("" = none), group_limit, wake_cap
-- Reply    {"OK", job_id} published (and "{Q}:beat:<name>" = tick_ms, PX marker_ttl_ms);
--          {"SKIP", last_tick_ms}: that tick or a later one was published already;
--          {"EXISTS", job_id}: the job hash exists (the marker is moved on anyway)
-- Errors   {"ERR", "BAD_ARGS"}
-- The marker outlives the completed lane (which keeps only the newest 100 jobs), so a
-- tick that ran long ago is never published again.
--@include base
--@include lanes
--@include enqueue
local name, tick, ttl = ARGV[1] or "", to_int(ARGV[2]), to_int(ARGV[3])
local job_id = ARGV[4] or ""

if name == "" or tick <= 0 or ttl <= 0 or job_id == "" then return {"ERR", "BAD_ARGS"} end
local k_mark = base .. ":beat:" .. name
local last = to_int(redis.call("GET", k_mark))
if last >= tick then return {"SKIP", tostring(last)} end
local now = server_ms()
local outcome = enqueue_one(job_id, ARGV[5] or "", to_int(ARGV[6]), to_int(ARGV[7]), to_int(ARGV[8]), 0,
                            ARGV[9] or "", to_int(ARGV[10]), now)
redis.call("SET", k_mark, tick, "PX", ttl)
if outcome == "EXISTS" then return {"EXISTS", job_id} end
stat_times(now, "last_enqueue_ms")
if outcome == "READY" then wake_workers(1, to_int(ARGV[11])) end
return {"OK", job_id}
