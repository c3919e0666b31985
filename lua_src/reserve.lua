-- reserve: lease the next runnable job, alternating between the grouped and the
-- ungrouped lane (lane:rr), groups served oldest-ready first within their limit.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock)
-- Reply    {"EMPTY"} | {"PAUSED"} |
--          {"JOB", job_id, payload, lock_until_ms, attempt, max_attempts, gid, lease_token}
-- Errors   none
--@include base
--@include lanes
--@include take
local now = now_or_server(ARGV[1])

if redis.call("EXISTS", base .. ":paused") == 1 then return {"PAUSED"} end

local job_id, gid, grouped_first = take_next(now)
if not job_id then
  flush_stats()  -- popping a group with nothing left still changes groups_ready
  return {"EMPTY"}
end
flip_lanes(grouped_first)
save_lanes()
local reply = lease(job_id, now)
stat_times(now, "last_reserve_ms")
return reply
