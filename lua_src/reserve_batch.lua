-- reserve_batch (omniq-tasks extension): lease up to max_jobs jobs in one call,
-- each picked exactly as reserve picks one (lane:rr, groups and their limits).
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), max_jobs (1..1000)
-- Reply    {"EMPTY"} | {"PAUSED"} |
--          {"JOBS", then per job: job_id, payload, and one string
--          "lock_until_ms:attempt:max_attempts:timeout_ms:lease_token:gid"
--          (three bulk strings per job instead of eight: cheaper to parse)}
-- Errors   none
--@include base
--@include lanes
--@include take
local now = now_or_server(ARGV[1])
local max_jobs = math.min(math.max(to_int(ARGV[2]), 1), 1000)

if redis.call("EXISTS", base .. ":paused") == 1 then return {"PAUSED"} end

local out = {"JOBS"}
for _ = 1, max_jobs do
  local job_id, _, grouped_first = take_next(now)
  if not job_id then break end
  flip_lanes(grouped_first)
  local job, timeout = lease(job_id, now)
  out[#out + 1] = job_id
  out[#out + 1] = job[3]
  out[#out + 1] = job[4] .. ":" .. job[5] .. ":" .. job[6] .. ":" .. timeout .. ":" .. job[8] .. ":" .. job[7]
end
if #out == 1 then
  flush_stats()  -- popping a group with nothing left still changes groups_ready
  return {"EMPTY"}
end
save_lanes()
stat_times(now, "last_reserve_ms")
return out
