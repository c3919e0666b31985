-- group_limit (omniq-tasks extension): set a group's concurrency limit, whatever it was
-- (the protocol's enqueue sets one only when the group has none), and make the group
-- ready when the new limit gives its waiting jobs room, as the protocol's scripts do
-- (group_ready_if_room: ZADD NX). A lower limit stops nothing that runs: the group's
-- next job starts once its inflight is below the new limit. (docs/operations.md)
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     gid, limit (a whole number >= 1), now_ms ("0" = server clock),
--          [wake_cap (> 0: push up to that many wake-up tokens to "{Q}:wake", one per job
--          the new room lets start, as enqueue's wake_cap)]
-- Reply    {"OK", previous limit ("" when none was set), "1" when the group became ready, else "0"}
-- Errors   {"ERR", "BAD_ARGS"}
-- Generated from lua_src/group_limit.lua by tools/build_lua.py: edit the source, not this file.

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

local gid, limit_text = ARGV[1] or "", ARGV[2] or ""

if gid == "" or not string.match(limit_text, "^[1-9]%d?%d?%d?%d?%d?%d?%d?%d?$") then
  return {"ERR", "BAD_ARGS"}
end
local now = now_or_server(ARGV[3])
local wake_cap = to_int(ARGV[4])
local k_limit = group_key(gid, "limit")
local previous = redis.call("GET", k_limit) or ""

redis.call("SET", k_limit, limit_text)
local was_ready = redis.call("ZSCORE", K_GROUPS_READY, gid)
group_ready_if_room(gid, now)
flush_stats()
if was_ready or not redis.call("ZSCORE", K_GROUPS_READY, gid) then
  return {"OK", previous, "0"}
end
if wake_cap > 0 then
  local k_wake = base .. ":wake"
  local room = math.min(group_limit(gid) - group_inflight(gid), redis.call("LLEN", group_key(gid, "wait")),
    wake_cap - redis.call("LLEN", k_wake))
  for _ = 1, room do redis.call("RPUSH", k_wake, "1") end
end
return {"OK", previous, "1"}
