-- fanout_open (omniq-tasks extension): open a fan-out of n children, once per key.
-- KEYS[1]  child anchor "{cc:<key>}:meta"
-- ARGV     n (decimal digits, 0 <= n < 1e14), ttl_ms (> 0), then (callback JSON, "" =
--          none), on_error (JSON, "" = none), queues (JSON list of the children's
--          queues), now_ms ("0" = server)
-- Reply    {"OK"} opened (n = 0: closed at once, nothing to count);
--          {"EXISTS", published, n}: opened before (a retried parent): nothing changed
-- Errors   {"ERR", "BAD_ARGS"}, {"ERR", "ALREADY_INIT"} (a protocol counter of that
--          key is running, started by childs_init)
--@include base
--@include fanout
local n, ttl = tonumber(ARGV[1]), to_int(ARGV[2])

-- n: decimal digits only, below 1e14 ("1e300", "inf", "0x10" or 1e20 would be stored
-- in a form DECR refuses, or remaining counts printed as "1e+15": Lua's %.14g)
if not string.match(ARGV[1] or "", "^%d+$") or n >= 1e14 or ttl <= 0 then return {"ERR", "BAD_ARGS"} end
if redis.call("EXISTS", k_fo) == 1 then
  local seen = redis.call("HMGET", k_fo, "published", "n")
  return {"EXISTS", seen[1] or "0", seen[2] or "0"}
end
if redis.call("EXISTS", k_count) == 1 then return {"ERR", "ALREADY_INIT"} end
redis.call("DEL", k_done, k_res)
redis.call("HSET", k_fo, "n", n, "state", n > 0 and "open" or "closed", "then", ARGV[3] or "",
           "on_error", ARGV[4] or "", "queues", ARGV[5] or "[]", "created_ms", now_or_server(ARGV[6]),
           "published", "0", "failed", 0)
redis.call("PEXPIRE", k_fo, ttl)
if n > 0 then redis.call("SET", k_count, n, "PX", ttl) end
return {"OK"}
