-- heartbeat_batch (omniq-tasks extension): renew up to 1000 leases of one queue.
-- Unlike heartbeat (max(old lock, now) + timeout_ms), each new lock is now +
-- timeout_ms: a worker that beats every third of a lease keeps the lock between a
-- third and one lease ahead of the server clock, however long the job runs, so a
-- dead worker's job comes back one lease after its last beat. Sending it twice
-- does no harm.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), count, then count pairs of job_id, lease_token
-- Reply    {now_ms, then per lease in order: its new lock_until_ms, or the reason it
--          was not renewed (TOKEN_REQUIRED, TOKEN_MISMATCH, NOT_ACTIVE, BAD_JOB_ID)}
-- Errors   {"ERR", "BATCH_TOO_LARGE", "1000"}, {"ERR", "BAD_ARGS"}
-- Generated from lua_src/heartbeat_batch.lua by tools/build_lua.py: edit the source, not this file.

-- base: reading numbers, the clock and the queue base from the anchor.
local function to_int(v)
  if not v or v == "" then return 0 end
  local n = tonumber(v)
  if not n then return 0 end
  return math.floor(n)
end

-- The Redis server clock in ms. Used when a caller sends now_ms "0" or nothing,
-- so that workers on machines with skewed clocks agree on leases.
local function server_ms()
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_or_server(v)
  local n = to_int(v)
  if n > 0 then return n end
  return server_ms()
end

-- Every script gets the anchor "<base>:meta" as KEYS[1] and derives the base.
local base = KEYS[1]
if string.sub(base, -5) == ":meta" then base = string.sub(base, 1, -6) end
-- lanes: every move of a job between lanes, each updating the lane, the idx:*
-- mirror and the stats counters together so they never disagree.
local K_WAIT = base .. ":wait"
local K_ACTIVE = base .. ":active"
local K_DELAYED = base .. ":delayed"
local K_FAILED = base .. ":failed"
local K_COMPLETED = base .. ":completed"
local K_GROUPS_READY = base .. ":groups:ready"
local K_STATS = base .. ":stats"
local KEEP_COMPLETED = 100
local DEFAULT_TIMEOUT_MS = 60000

local function job_key(job_id) return base .. ":job:" .. job_id end
local function group_key(gid, suffix) return base .. ":g:" .. gid .. ":" .. suffix end
local function idx_key(lane) return base .. ":idx:" .. lane end

-- Counter changes are summed in the script and written once at the end by
-- flush_stats (or stat_times): a batch touches the stats hash once, not per job.
-- A decrement never leaves a counter below 0.
local pending_stats = {}
local completed_len = nil

local function stat_add(field, delta)
  pending_stats[field] = (pending_stats[field] or 0) + delta
end

-- The same goes for the writes every leased or finished job makes to a shared key
-- (K_ACTIVE, the idx:* mirrors, K_COMPLETED, lease:seq): they are collected and made
-- with one command per key at the end (flush_lanes, from flush_stats), so a batch of
-- 32 leases costs one ZADD, not 32. Nothing reads those keys back in the same script
-- after writing them, so the state at the end is the same.
local active_adds = {}     -- score, id, ... for K_ACTIVE
local idx_adds = {}        -- lane -> {score, id, ...}
local idx_rems = {}        -- lane -> {id, ...}
local completed_ids = {}   -- ids for one LPUSH on K_COMPLETED, oldest first
local lease_seq = nil      -- the last lease sequence number handed out
local lease_seq_pending = 0

local lanes_pending = false  -- anything for flush_lanes to write (most scripts: no)

-- Leasing: state active, attempt + 1, a fresh lock and an unguessable token
-- (the digest mixes the server clock's microseconds, read once per script, with
-- a per-queue sequence). Returns the reserve reply and the lease length in ms.
local token_salt = nil

-- A failed run's lease ends (ack_fail, ack_fail_batch): keep its error text (at most
-- MAX_ERROR_BYTES; "" keeps the old one), free the lease, then retry (at retry_at
-- when given and above 0, else after backoff_ms) or fail.
-- Returns the due ms, or nil when failed.
local MAX_ERROR_BYTES = 4096

-- Heartbeat and both acks check the token first, then that the job is active.
-- Returns the reason word (or nil) and the job's gid. With take = true (the acks)
-- the id also leaves K_ACTIVE: ZREM answers whether it was there.
local function check_lease(job_id, token, take)
  if not token or token == "" then return "TOKEN_REQUIRED" end
  local f = redis.call("HMGET", job_key(job_id), "lease_token", "gid")
  if f[1] ~= token then return "TOKEN_MISMATCH" end
  if take then
    if redis.call("ZREM", K_ACTIVE, job_id) == 0 then return "NOT_ACTIVE" end
  elseif not redis.call("ZSCORE", K_ACTIVE, job_id) then
    return "NOT_ACTIVE"
  end
  return nil, f[2] or ""
end

local MAX_LEASES = 1000
local now = now_or_server(ARGV[1])
local count = to_int(ARGV[2])

if count > MAX_LEASES then return {"ERR", "BATCH_TOO_LARGE", tostring(MAX_LEASES)} end
if #ARGV < 2 + 2 * count then return {"ERR", "BAD_ARGS"} end

-- With maxmemory and noeviction, Redis refuses a script only at its first write,
-- and only when that write may grow memory (ZADD, HSET). Renewing a lease grows
-- nothing, and refusing it would let the reaper hand a running job to another
-- worker, so the first write is one that never grows memory.
redis.call("DEL", base .. ":oom-guard")

local out = {tostring(now)}
for i = 1, count do
  local job_id = ARGV[1 + 2 * i]
  local err
  if job_id == "" then err = "BAD_JOB_ID" else err = check_lease(job_id, ARGV[2 + 2 * i]) end
  if err then
    out[#out + 1] = err
  else
    local k_job = job_key(job_id)
    local timeout = to_int(redis.call("HGET", k_job, "timeout_ms"))
    if timeout <= 0 then timeout = DEFAULT_TIMEOUT_MS end
    local lock_until = now + timeout
    redis.call("ZADD", K_ACTIVE, lock_until, job_id)
    redis.call("HSET", k_job, "lock_until_ms", lock_until, "updated_ms", now)
    out[#out + 1] = tostring(lock_until)
  end
end
return out
