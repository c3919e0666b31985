-- ack_fail_batch (omniq-tasks extension): ack_fail for up to 1000 leases of one queue.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), count, then per lease 5 fields: job_id,
--          lease_token, error text (at most 4096 bytes kept as last_error; "" keeps
--          the old one), mode ("" = retry or fail when the attempts are used up, as
--          ack_fail; "final" = fail now), retry_at_ms (epoch ms the retry is due,
--          computed by the worker from the task's retry policy; "" or "0" = now +
--          backoff_ms, as ack_fail), then [replay channel, sequence (see
--          include/replay.lua): the same pair again gets the first answer]
-- Reply    {per lease, in order: "R:<due_ms>" (retry due then), "F" (failed for
--          good), or the reason it was not acked (TOKEN_REQUIRED, TOKEN_MISMATCH,
--          NOT_ACTIVE, BAD_JOB_ID)}
-- Errors   {"ERR", "BATCH_TOO_LARGE", "1000"}, {"ERR", "BAD_ARGS"}
-- A job failed for good wakes the callers waiting on it in handle.get() (include/results.lua).
--@include base
--@include lanes
--@include replay
--@include results
local MAX_ACKS = 1000
local FIELDS = 5
local now = now_or_server(ARGV[1])
local count = to_int(ARGV[2])

if count > MAX_ACKS then return {"ERR", "BATCH_TOO_LARGE", tostring(MAX_ACKS)} end
if #ARGV < 2 + FIELDS * count then return {"ERR", "BAD_ARGS"} end
local chan, seq = ARGV[3 + FIELDS * count], ARGV[4 + FIELDS * count]
local saved = replay_get(chan, seq)
if saved then return saved end

local out = {}
local finished = false
local failed = {}
for i = 0, count - 1 do
  local a = 2 + FIELDS * i
  local job_id, error_text = ARGV[a + 1], ARGV[a + 3]
  local err, gid
  if job_id == "" then err = "BAD_JOB_ID" else err, gid = check_lease(job_id, ARGV[a + 2], true) end
  if err then
    out[#out + 1] = err
  else
    local due = fail_lease(job_id, gid, error_text, now, ARGV[a + 4] == "final", to_int(ARGV[a + 5]))
    out[#out + 1] = due and ("R:" .. due) or "F"
    if not due then failed[#failed + 1] = job_id end
    finished = true
  end
end
if finished then stat_times(now, "last_finish_ms") end
notify_done(failed, now)
replay_put(chan, seq, out)
return out
