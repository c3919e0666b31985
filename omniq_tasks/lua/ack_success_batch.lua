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
-- Generated from lua_src/ack_success_batch.lua by tools/build_lua.py: edit the source, not this file.

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

local function idx_later(pending, lane, ...)
  lanes_pending = true
  local t = pending[lane]
  if not t then
    t = {}
    pending[lane] = t
  end
  for _, v in ipairs({...}) do t[#t + 1] = v end
end

-- One command per 4000 values (an even number: ZADD's score, member pairs stay
-- whole), since unpack() of a very long list fails (a reap may end thousands).
local function call_spread(command, key, values)
  local reply
  for i = 1, #values, 4000 do
    reply = redis.call(command, key, unpack(values, i, math.min(i + 3999, #values)))
  end
  return reply
end

local function flush_lanes()
  if not lanes_pending then return end
  lanes_pending = false
  if #active_adds > 0 then
    call_spread("ZADD", K_ACTIVE, active_adds)
    active_adds = {}
  end
  for _, lane in ipairs({"wait", "active", "delayed", "failed", "completed"}) do
    if idx_rems[lane] then call_spread("ZREM", idx_key(lane), idx_rems[lane]) end
    if idx_adds[lane] then call_spread("ZADD", idx_key(lane), idx_adds[lane]) end
  end
  idx_rems, idx_adds = {}, {}
  if #completed_ids > 0 then
    completed_len = call_spread("LPUSH", K_COMPLETED, completed_ids)
    completed_ids = {}
  end
  if lease_seq_pending > 0 then
    redis.call("INCRBY", base .. ":lease:seq", lease_seq_pending)
    lease_seq_pending = 0
  end
end

local function flush_stats()
  flush_lanes()
  for field, delta in pairs(pending_stats) do
    if delta ~= 0 and redis.call("HINCRBY", K_STATS, field, delta) < 0 then
      redis.call("HSET", K_STATS, field, "0")
    end
  end
  pending_stats = {}
  if completed_len then
    -- Completed keeps the newest KEEP_COMPLETED ids; trimmed ids lose their hash too.
    if completed_len > KEEP_COMPLETED then
      local old = redis.call("LRANGE", K_COMPLETED, KEEP_COMPLETED, -1)
      redis.call("LTRIM", K_COMPLETED, 0, KEEP_COMPLETED - 1)
      for i = 1, #old, 500 do
        local ids, hashes = {}, {}
        for j = i, math.min(i + 499, #old) do
          ids[#ids + 1] = old[j]
          hashes[#hashes + 1] = job_key(old[j])
        end
        redis.call("ZREM", idx_key("completed"), unpack(ids))
        redis.call("DEL", unpack(hashes))
      end
      completed_len = KEEP_COMPLETED
    end
    redis.call("HSET", K_STATS, "completed_kept", completed_len)
    completed_len = nil
  end
end

-- Flush the counters and stamp last_activity_ms (and the named time field).
local function stat_times(now, field)
  flush_stats()
  if field then
    redis.call("HSET", K_STATS, "last_activity_ms", now, field, now)
  else
    redis.call("HSET", K_STATS, "last_activity_ms", now)
  end
end

local function group_limit(gid)
  local limit = to_int(redis.call("GET", group_key(gid, "limit")))
  if limit <= 0 then return 1 end
  return limit
end

local function group_inflight(gid)
  return to_int(redis.call("GET", group_key(gid, "inflight")))
end

-- Ready-making always uses ZADD NX: a group already ready keeps its place.
local function group_ready_if_room(gid, now)
  if group_inflight(gid) < group_limit(gid)
      and redis.call("LLEN", group_key(gid, "wait")) > 0 then
    if redis.call("ZADD", K_GROUPS_READY, "NX", now, gid) == 1 then
      stat_add("groups_ready", 1)
    end
  end
end

-- enter_delayed, enter_failed and enter_completed take the job from a lease when
-- from_lease is true: its lease_token and lock_until_ms are cleared in the same write.
local function hset_state(job_id, from_lease, ...)
  if from_lease then
    redis.call("HSET", job_key(job_id), "lease_token", "", "lock_until_ms", "", ...)
  else
    redis.call("HSET", job_key(job_id), ...)
  end
end

-- The list is trimmed to KEEP_COMPLETED by flush_stats, once per script.
local function enter_completed(job_id, now, from_lease)
  hset_state(job_id, from_lease, "state", "completed", "completed_ms", now, "updated_ms", now)
  completed_ids[#completed_ids + 1] = job_id
  idx_later(idx_adds, "completed", now, job_id)
end

-- Leasing: state active, attempt + 1, a fresh lock and an unguessable token
-- (the digest mixes the server clock's microseconds, read once per script, with
-- a per-queue sequence). Returns the reserve reply and the lease length in ms.
local token_salt = nil

local function lease(job_id, now)
  local k_job = job_key(job_id)
  local f = redis.call("HMGET", k_job, "payload", "attempt", "max_attempts", "timeout_ms",
    "gid", "first_started_ms")
  local timeout = to_int(f[4])
  if timeout <= 0 then timeout = DEFAULT_TIMEOUT_MS end
  local attempt = to_int(f[2]) + 1
  local lock_until = now + timeout
  if not token_salt then
    local t = redis.call("TIME")
    token_salt = t[1] .. "." .. t[2]
  end
  -- The first lease of a script takes its number with INCR; later ones count on
  -- from it and flush_lanes adds them to lease:seq with one INCRBY.
  if lease_seq == nil then
    lease_seq = redis.call("INCR", base .. ":lease:seq")
  else
    lease_seq = lease_seq + 1
    lease_seq_pending = lease_seq_pending + 1
  end
  local seq = lease_seq
  local token = redis.sha1hex(job_id .. ":" .. now .. ":" .. seq .. ":" .. token_salt)
  if not f[6] or f[6] == "" then
    redis.call("HSET", k_job, "state", "active", "attempt", attempt, "lock_until_ms", lock_until,
      "lease_token", token, "last_started_ms", now, "updated_ms", now, "first_started_ms", now)
  else
    redis.call("HSET", k_job, "state", "active", "attempt", attempt, "lock_until_ms", lock_until,
      "lease_token", token, "last_started_ms", now, "updated_ms", now)
  end
  active_adds[#active_adds + 1] = lock_until
  active_adds[#active_adds + 1] = job_id
  idx_later(idx_rems, "wait", job_id)
  idx_later(idx_adds, "active", now, job_id)
  stat_add("active", 1)
  return {"JOB", job_id, f[1] or "", tostring(lock_until), tostring(attempt),
    tostring(to_int(f[3])), f[5] or "", token}, timeout
end

-- Called after the id was removed from K_ACTIVE: frees the group slot.
local function left_active(job_id, gid, now)
  idx_later(idx_rems, "active", job_id)
  stat_add("active", -1)
  if gid and gid ~= "" then
    local k_inflight = group_key(gid, "inflight")
    if redis.call("DECR", k_inflight) <= 0 then
      redis.call("DEL", k_inflight)
    end
    group_ready_if_room(gid, now)
  end
end

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
-- replay: the same answer for a call sent twice. A caller that may send a call
-- again (its connection dropped after Redis ran it but before the reply came)
-- passes a channel and a sequence number; the script keeps its last answer per
-- channel in "{Q}:rq:<channel>" for REPLAY_TTL_MS, and the same channel and number
-- again get that answer instead of a second run. A caller has at most one call
-- in flight per channel, so one key per channel is enough.
local REPLAY_TTL_MS = 600000

local function replay_key(chan) return base .. ":rq:" .. chan end

-- The saved answer when (chan, seq) was already run, else nil.
local function replay_get(chan, seq)
  if not chan or chan == "" then return nil end
  local saved = redis.call("GET", replay_key(chan))
  if not saved then return nil end
  local entry = cmsgpack.unpack(saved)
  if entry[1] ~= seq then return nil end
  return entry[2]
end

local function replay_put(chan, seq, answer)
  if chan and chan ~= "" then
    redis.call("SET", replay_key(chan), cmsgpack.pack({seq, answer}), "PX", REPLAY_TTL_MS)
  end
end
-- results (omniq-tasks extension): return values stored by ack_success_batch,
-- and the wake-up of callers waiting in handle.get().
--   {Q}:result:<id>   STRING the return value as JSON (or a "!" marker), PX = its TTL
--   {Q}:watching      ZSET   ids someone waits on, score = until when (ms)
--   {Q}:done:<id>     LIST   a wake-up token for the waiters of <id> (short TTL)
-- Nobody waiting (the usual case) costs one EXISTS per call, not per job.
local NOTIFY_TTL_MS = 60000

local function result_key(job_id) return base .. ":result:" .. job_id end

-- The results section after the replay tag: a count of TTL groups, then per group
-- its TTL in ms, how many results it holds and, per result, its lease's position
-- (1-based) and payload. Returns position -> ARGV index of the payload and
-- position -> TTL (the ARGV string, as SET takes it), or nil when the section is
-- malformed. (Indexes, not copies: nothing per result is built but two numbers.)
local function read_results(first, count)
  local at, ttls = {}, {}
  local a = first + 1
  for _ = 1, to_int(ARGV[first]) do
    local ttl, k = ARGV[a], to_int(ARGV[a + 1])
    if not ttl or not string.match(ttl, "^[1-9]%d*$") or k < 0 or #ARGV < a + 1 + 2 * k then return nil end
    for j = 1, k do
      local pos = to_int(ARGV[a + 2 * j])
      if pos < 1 or pos > count then return nil end
      at[pos] = a + 2 * j + 1
      ttls[pos] = ttl
    end
    a = a + 2 + 2 * k
  end
  return at, ttls
end

-- Wake the waiters of the ids in done (acked now), if any are watched.
local function notify_done(done, now)
  if #done == 0 then return end
  local k_watching = base .. ":watching"
  if redis.call("EXISTS", k_watching) == 0 then return end
  redis.call("ZREMRANGEBYSCORE", k_watching, "-inf", "(" .. now)  -- waiters long gone
  for _, job_id in ipairs(done) do
    if redis.call("ZSCORE", k_watching, job_id) then
      redis.call("ZREM", k_watching, job_id)
      local k_done = base .. ":done:" .. job_id
      redis.call("RPUSH", k_done, "1")
      redis.call("PEXPIRE", k_done, NOTIFY_TTL_MS)
    end
  end
end

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
