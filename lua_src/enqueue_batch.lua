-- enqueue_batch (omniq-tasks extension): enqueue for up to 1000 jobs of one queue,
-- each exactly as enqueue does it, and wake-up tokens for blocked workers.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), wake_cap (max length of "{Q}:wake"; 0 = no
--          token), count, then per job 4 fields: job_id, payload, gid ("" = none),
--          options "max_attempts:timeout_ms:backoff_ms:due_ms:group_limit",
--          [replay channel, sequence (see include/replay.lua): the same pair again
--          gets the first answer, so a resent chunk never reports its own jobs EXISTS],
--          [once (workflows, docs/workflows.md): a name and a ttl_ms; each job id is
--          added to the SET "{Q}:once:<name>" (kept ttl_ms), and an id that is in it
--          already answers EXISTS even when its job hash is gone (trimmed from the
--          completed lane): a workflow step is published once]
-- Reply    {queued count, then position (1-based), reason for each job not queued:
--          "EXISTS" (idempotent: the job hash exists, unchanged) or "BAD_JOB_ID"}
-- Errors   {"ERR", "BATCH_TOO_LARGE", "1000"}, {"ERR", "BAD_ARGS"}
--@include base
--@include lanes
--@include enqueue
--@include replay
local MAX_JOBS = 1000
local FIELDS = 4
local now = now_or_server(ARGV[1])
local wake_cap = to_int(ARGV[2])
local count = to_int(ARGV[3])

if count > MAX_JOBS then return {"ERR", "BATCH_TOO_LARGE", tostring(MAX_JOBS)} end
if #ARGV < 3 + FIELDS * count then return {"ERR", "BAD_ARGS"} end
local chan, seq = ARGV[4 + FIELDS * count], ARGV[5 + FIELDS * count]
local saved = replay_get(chan, seq)
if saved then return saved end
local k_once, once_ttl = nil, 0
if #ARGV >= 7 + FIELDS * count then
  k_once, once_ttl = base .. ":once:" .. ARGV[6 + FIELDS * count], to_int(ARGV[7 + FIELDS * count])
  if ARGV[6 + FIELDS * count] == "" or once_ttl <= 0 then return {"ERR", "BAD_ARGS"} end
end

-- Parse every distinct options string first, so a bad one writes nothing.
local parsed = {}
for i = 0, count - 1 do
  local options = ARGV[3 + FIELDS * i + 4]
  if not parsed[options] then
    local m, t, b, d, l = string.match(options, "^(%d+):(%d+):(%d+):(%d+):(%d+)$")
    if not m then return {"ERR", "BAD_ARGS"} end
    parsed[options] = {to_int(m), to_int(t), to_int(b), to_int(d), to_int(l)}
  end
end

local out = {0}
local ready = 0
local later = {}
for i = 0, count - 1 do
  local a = 3 + FIELDS * i
  local job_id = ARGV[a + 1]
  local o = parsed[ARGV[a + 4]]
  local outcome = "BAD_JOB_ID"
  if job_id ~= "" and k_once and redis.call("SADD", k_once, job_id) == 0 then
    outcome = "EXISTS"
  elseif job_id ~= "" then
    outcome = enqueue_one(job_id, ARGV[a + 2], o[1], o[2], o[3], o[4], ARGV[a + 3], o[5], now, later)
  end
  if outcome == "OK" or outcome == "READY" then
    out[1] = out[1] + 1
    if outcome == "READY" then ready = ready + 1 end
  else
    out[#out + 1] = i + 1
    out[#out + 1] = outcome
  end
end
enter_wait_many(later, now)
if k_once then redis.call("PEXPIRE", k_once, once_ttl) end
if out[1] > 0 then stat_times(now, "last_enqueue_ms") end
wake_workers(ready, wake_cap)
replay_put(chan, seq, out)
return out
