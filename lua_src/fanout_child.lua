-- fanout_child (omniq-tasks extension): one child of a fan-out ended for good (done,
-- or failed with no retry left). Counted once per child id, whatever the repeats.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     child_id (its job id), index (0-based, its place in the fan-out), entry
--          ("+<task>\n<result JSON>" or "-<task>\n<error text>"; the first one kept)
-- Reply    {"COUNTED", remaining} | {"DUP", remaining} (counted before) |
--          {"FIRE", then, on_error, failed}: every child is counted and the callback
--            is not yet marked published: publish it (once: see docs/workflows.md),
--            then call fanout_fired. A repeat gets FIRE again until then. |
--          {"FIRED"} (published already) | {"GONE"} (no such fan-out: its TTL passed)
-- Errors   {"ERR", "BAD_ARGS"}
--@include base
--@include fanout
local child_id, index, entry = ARGV[1] or "", ARGV[2] or "", ARGV[3] or ""

if child_id == "" or not string.match(index, "^%d+$") or entry == "" then return {"ERR", "BAD_ARGS"} end
local state = redis.call("HGET", k_fo, "state")
if not state then return {"GONE"} end
if state == "open" then
  if redis.call("SADD", k_done, child_id) == 0 then
    return {"DUP", tostring(math.max(to_int(redis.call("GET", k_count)), 0))}
  end
  local ttl = redis.call("PTTL", k_fo)
  keep_ttl(k_done, ttl)
  redis.call("HSETNX", k_res, index, entry)
  keep_ttl(k_res, ttl)
  if string.sub(entry, 1, 1) == "-" then redis.call("HINCRBY", k_fo, "failed", 1) end
  local remaining = redis.call("DECR", k_count)
  if remaining > 0 then return {"COUNTED", tostring(remaining)} end
  redis.call("DEL", k_count, k_done)
  redis.call("HSET", k_fo, "state", "closed")
  state = "closed"
end
if state == "closed" then
  local fo = redis.call("HMGET", k_fo, "then", "on_error", "failed")
  return {"FIRE", fo[1] or "", fo[2] or "", fo[3] or "0"}
end
return {"FIRED"}
