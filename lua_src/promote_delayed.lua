-- promote_delayed: move due jobs from delayed back to their wait lane. A delayed id
-- without a job hash is dropped (and counted), as reap_expired drops one.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), max_promote (default 1000)
-- Reply    {"OK", count}
-- Errors   none
--@include base
--@include lanes
local now = now_or_server(ARGV[1])
local max_promote = to_int(ARGV[2] or "1000")

local ids = redis.call("ZRANGEBYSCORE", K_DELAYED, "-inf", now, "LIMIT", 0, max_promote)
for _, job_id in ipairs(ids) do
  redis.call("ZREM", K_DELAYED, job_id)
  redis.call("ZREM", idx_key("delayed"), job_id)
  stat_add("delayed", -1)
  local f = redis.call("HMGET", job_key(job_id), "state", "gid")
  if f[1] then enter_wait(job_id, f[2] or "", now) end
end
if #ids > 0 then stat_times(now) end
return {"OK", tostring(#ids)}
