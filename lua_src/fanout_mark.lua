-- fanout_mark (omniq-tasks extension): note a fan-out's progress: "published" = "1"
-- (every child published) or "state" = "fired" (the callback is published, or there
-- is none: later FIREs become FIRED). A fan-out whose TTL passed is left alone.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     field ("published" | "state"), value
-- Reply    {"OK"} | {"GONE"}
-- Errors   {"ERR", "BAD_ARGS"}
--@include base
--@include fanout
local field, value = ARGV[1], ARGV[2]

if not ((field == "published" and value == "1") or (field == "state" and value == "fired")) then
  return {"ERR", "BAD_ARGS"}
end
if redis.call("EXISTS", k_fo) == 0 then return {"GONE"} end
redis.call("HSET", k_fo, field, value)
return {"OK"}
