-- ack_success_batch (omniq-tasks extension): ack_success for up to 1000 leases.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), count, then count pairs of job_id, lease_token,
--          [replay channel, sequence (see include/replay.lua): the same pair again
--          gets the first answer (nothing is written twice)],
--          [results (extension, see include/results.lua): a count of groups, then per
--          group ttl_ms, k, and k pairs of position (1-based), payload: each stored in
--          "{Q}:result:<id>" with PX ttl_ms when that lease is acked; none sent =
--          nothing stored]
-- Reply    {acked count, then position (1-based), reason for each lease NOT acked
--          (TOKEN_REQUIRED, TOKEN_MISMATCH, NOT_ACTIVE, BAD_JOB_ID)}
-- Errors   {"ERR", "BATCH_TOO_LARGE", "1000"}, {"ERR", "BAD_ARGS"} (also for a bad
--          results section: nothing acked)
--@include base
--@include lanes
--@include replay
--@include results
local MAX_ACKS = 1000
local now = now_or_server(ARGV[1])
local count = to_int(ARGV[2])

if count > MAX_ACKS then return {"ERR", "BATCH_TOO_LARGE", tostring(MAX_ACKS)} end
if #ARGV < 2 + 2 * count then return {"ERR", "BAD_ARGS"} end
local chan, seq = ARGV[3 + 2 * count], ARGV[4 + 2 * count]
local saved = replay_get(chan, seq)
if saved then return saved end
local at, ttls = {}, nil
if #ARGV > 4 + 2 * count then
  at, ttls = read_results(5 + 2 * count, count)
  if not at then return {"ERR", "BAD_ARGS"} end
end
local done = {}

local out = {0}
for i = 1, count do
  local job_id = ARGV[1 + 2 * i]
  local err, gid
  if job_id == "" then err = "BAD_JOB_ID" else err, gid = check_lease(job_id, ARGV[2 + 2 * i], true) end
  if err then
    out[#out + 1] = i
    out[#out + 1] = err
  else
    left_active(job_id, gid, now)
    enter_completed(job_id, now, true)
    out[1] = out[1] + 1
    local r = at[i]
    if r then redis.call("SET", result_key(job_id), ARGV[r], "PX", ttls[i]) end
    done[#done + 1] = job_id
  end
end
if out[1] > 0 then stat_times(now, "last_finish_ms") end
notify_done(done, now)
replay_put(chan, seq, out)
return out
