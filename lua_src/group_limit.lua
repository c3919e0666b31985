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
--@include base
--@include lanes
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
