-- heartbeat: extend a running job's lease.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     job_id, now_ms ("0" = server clock), lease_token
-- Reply    {"OK", lock_until_ms}; the new lock is max(old lock, now) + timeout_ms
-- Errors   TOKEN_REQUIRED, TOKEN_MISMATCH, NOT_ACTIVE
--@include base
--@include lanes
local job_id = ARGV[1] or ""
local now = now_or_server(ARGV[2])
local token = ARGV[3]

local err = check_lease(job_id, token)
if err then return {"ERR", err} end

local k_job = job_key(job_id)
local timeout = to_int(redis.call("HGET", k_job, "timeout_ms"))
if timeout <= 0 then timeout = DEFAULT_TIMEOUT_MS end
local lock_until = math.max(to_int(redis.call("ZSCORE", K_ACTIVE, job_id)), now) + timeout
redis.call("ZADD", K_ACTIVE, lock_until, job_id)
redis.call("HSET", k_job, "lock_until_ms", lock_until, "updated_ms", now)
return {"OK", tostring(lock_until)}
