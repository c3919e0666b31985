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
-- Generated from lua_src/enqueue_tick.lua by tools/build_lua.py: edit the source, not this file.

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

-- written = true: the caller already wrote state "wait" and updated_ms (enqueue).
local function enter_wait(job_id, gid, now, written)
  if not written then
    redis.call("HSET", job_key(job_id), "state", "wait", "updated_ms", now)
  end
  redis.call("ZADD", idx_key("wait"), now, job_id)
  stat_add("waiting_total", 1)
  if gid ~= "" then
    redis.call("RPUSH", group_key(gid, "wait"), job_id)
    stat_add("group_waiting", 1)
    group_ready_if_room(gid, now)
  else
    redis.call("RPUSH", K_WAIT, job_id)
    stat_add("waiting", 1)
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

local function enter_delayed(job_id, due, now, from_lease)
  hset_state(job_id, from_lease, "state", "delayed", "due_ms", due, "updated_ms", now)
  redis.call("ZADD", K_DELAYED, due, job_id)
  redis.call("ZADD", idx_key("delayed"), now, job_id)
  stat_add("delayed", 1)
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

-- A failed run's lease ends (ack_fail, ack_fail_batch): keep its error text (at most
-- MAX_ERROR_BYTES; "" keeps the old one), free the lease, then retry (at retry_at
-- when given and above 0, else after backoff_ms) or fail.
-- Returns the due ms, or nil when failed.
local MAX_ERROR_BYTES = 4096

-- enqueue: write one new job and put it in its lane. Returns "OK", "EXISTS" (the
-- job hash already exists: nothing changes, so publishing is idempotent) or
-- "READY" (queued and runnable now). With a `later` list, a ready ungrouped job's
-- id is appended there instead, for enter_wait_many to queue them all at once.
local function enqueue_one(job_id, payload, max_attempts, timeout_ms, backoff_ms, due_ms, gid, limit, now, later)
  local k_job = job_key(job_id)
  if redis.call("EXISTS", k_job) == 1 then return "EXISTS" end
  redis.call("HSET", k_job, "id", job_id, "payload", payload, "state", "wait", "attempt", "0",
    "max_attempts", max_attempts, "timeout_ms", timeout_ms, "backoff_ms", backoff_ms,
    "created_ms", now, "updated_ms", now, "queued_ms", now, "first_started_ms", "",
    "last_started_ms", "", "completed_ms", "", "failed_ms", "")
  if gid ~= "" then
    redis.call("HSET", k_job, "gid", gid)
    redis.call("SET", base .. ":has_groups", "1")
    if limit > 0 then redis.call("SET", group_key(gid, "limit"), limit, "NX") end
  end
  if due_ms > now then
    enter_delayed(job_id, due_ms, now)
    -- A limit this publish set can give waiting jobs of the group room now.
    if gid ~= "" and limit > 0 then group_ready_if_room(gid, now) end
    return "OK"
  end
  if later and gid == "" then
    later[#later + 1] = job_id
  else
    enter_wait(job_id, gid, now, true)
  end
  return "READY"
end

-- One token per ready job, keeping at most wake_cap in "{Q}:wake": idle omniq-tasks
-- workers block on that list, so that many of them start at once.
local function wake_workers(ready, wake_cap)
  if ready <= 0 or wake_cap <= 0 then return end
  local k_wake = base .. ":wake"
  local room = wake_cap - redis.call("LLEN", k_wake)
  for _ = 1, math.min(room, ready) do redis.call("RPUSH", k_wake, "1") end
end

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
