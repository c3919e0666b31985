-- fanout_mark (omniq-tasks extension): note a fan-out's progress: "published" = "1"
-- (every child published), "progress_ms" = epoch ms (its publisher is still at work:
-- the sweeper does not take the children it has not published yet for gone), or
-- "state" = "fired" (the callback is published, or there is none: later FIREs become
-- FIRED). A fan-out whose TTL passed is left alone.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     field ("published" | "progress_ms" | "state"), value
-- Reply    {"OK"} | {"GONE"}
-- Errors   {"ERR", "BAD_ARGS"}
--@include base
--@include fanout
local field, value = ARGV[1], ARGV[2]

if not ((field == "published" and value == "1") or (field == "state" and value == "fired")
        or (field == "progress_ms" and string.match(value or "", "^[1-9]%d*$"))) then
  return {"ERR", "BAD_ARGS"}
end
if redis.call("EXISTS", k_fo) == 0 then return {"GONE"} end
redis.call("HSET", k_fo, field, value)
return {"OK"}
