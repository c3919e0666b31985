-- enqueue_batch (omniq-tasks extension): enqueue for up to 1000 jobs of one queue,
-- each exactly as enqueue does it, and a wake-up token for blocked workers.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), wake_cap (max length of "{Q}:wake"; 0 = no
--          token), count, then per job 8 fields: job_id, payload, max_attempts,
--          timeout_ms, backoff_ms, due_ms, gid, group_limit
-- Reply    flat list: job_id, "OK" | job_id, "EXISTS" (idempotent: unchanged) |
--          job_id, "ERR", "BAD_JOB_ID"
-- Errors   {"ERR", "BATCH_TOO_LARGE", "1000"}, {"ERR", "BAD_ARGS"}
--@include base
--@include lanes
--@include enqueue
local MAX_JOBS = 1000
local FIELDS = 8
local now = now_or_server(ARGV[1])
local wake_cap = to_int(ARGV[2])
local count = to_int(ARGV[3])

if count > MAX_JOBS then return {"ERR", "BATCH_TOO_LARGE", tostring(MAX_JOBS)} end
if #ARGV < 3 + FIELDS * count then return {"ERR", "BAD_ARGS"} end

local out = {}
local queued, ready = 0, 0
for i = 0, count - 1 do
  local a = 3 + FIELDS * i
  local job_id = ARGV[a + 1]
  out[#out + 1] = job_id
  if job_id == "" then
    out[#out + 1] = "ERR"
    out[#out + 1] = "BAD_JOB_ID"
  else
    local outcome = enqueue_one(job_id, ARGV[a + 2], to_int(ARGV[a + 3]), to_int(ARGV[a + 4]),
      to_int(ARGV[a + 5]), to_int(ARGV[a + 6]), ARGV[a + 7], to_int(ARGV[a + 8]), now)
    if outcome == "EXISTS" then
      out[#out + 1] = "EXISTS"
    else
      out[#out + 1] = "OK"
      queued = queued + 1
      if outcome == "READY" then ready = ready + 1 end
    end
  end
end
if queued > 0 then stat_times(now, "last_enqueue_ms") end
-- One token per ready job up to wake_cap: enough to wake that many idle workers.
if ready > 0 and wake_cap > 0 then
  local k_wake = base .. ":wake"
  local room = wake_cap - redis.call("LLEN", k_wake)
  for _ = 1, math.min(room, ready) do redis.call("RPUSH", k_wake, "1") end
end
return out
