-- reserve_batch (omniq-tasks extension): lease up to max_jobs jobs in one call,
-- each picked exactly as reserve picks one (lane:rr, groups and their limits).
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), max_jobs (1..1000), [replay channel, sequence
--          (see include/replay.lua): the same pair again answers the jobs that call
--          leased and still hold its lease, without leasing more]
-- Reply    {"EMPTY"} | {"PAUSED"} |
--          {"JOBS", then per job: job_id, payload, and one string
--          "lock_until_ms:attempt:max_attempts:timeout_ms:lease_token:gid"
--          (three bulk strings per job instead of eight: cheaper to parse)}
-- Errors   none
--@include base
--@include lanes
--@include take
--@include replay
local now = now_or_server(ARGV[1])
local max_jobs = math.min(math.max(to_int(ARGV[2]), 1), 1000)
local chan, seq = ARGV[3], ARGV[4]

-- Only ids and tokens are remembered (not payloads): a replay reads the rest back.
local function replayed(leases)
  local out = {"JOBS"}
  for i = 1, #leases, 2 do
    local job_id, token = leases[i], leases[i + 1]
    local f = redis.call("HMGET", job_key(job_id), "payload", "attempt", "max_attempts",
      "timeout_ms", "gid", "lease_token", "lock_until_ms", "state")
    if f[6] == token and f[8] == "active" then
      local timeout = to_int(f[4])
      if timeout <= 0 then timeout = DEFAULT_TIMEOUT_MS end
      out[#out + 1] = job_id
      out[#out + 1] = f[1] or ""
      out[#out + 1] = (f[7] or "") .. ":" .. (f[2] or "") .. ":" .. tostring(to_int(f[3])) .. ":" ..
        timeout .. ":" .. token .. ":" .. (f[5] or "")
    end
  end
  if #out == 1 then return {"EMPTY"} end
  return out
end

local saved = replay_get(chan, seq)
if saved then return replayed(saved) end

if redis.call("EXISTS", base .. ":paused") == 1 then return {"PAUSED"} end

local out = {"JOBS"}
local leases = {}
for _ = 1, max_jobs do
  local job_id, _, grouped_first = take_next(now)
  if not job_id then break end
  flip_lanes(grouped_first)
  local job, timeout = lease(job_id, now)
  out[#out + 1] = job_id
  out[#out + 1] = job[3]
  out[#out + 1] = job[4] .. ":" .. job[5] .. ":" .. job[6] .. ":" .. timeout .. ":" .. job[8] .. ":" .. job[7]
  leases[#leases + 1] = job_id
  leases[#leases + 1] = job[8]
end
if #out == 1 then
  flush_stats()  -- popping a group with nothing left still changes groups_ready
  return {"EMPTY"}
end
save_lanes()
stat_times(now, "last_reserve_ms")
replay_put(chan, seq, leases)
return out
