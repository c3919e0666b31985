-- retry_failed_batch: retry_failed for up to 100 ids at once.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     now_ms ("0" = server clock), count, id1..idN
-- Reply    flat list: id, "OK" | id, "ERR", reason (NO_JOB, NOT_FAILED, BAD_JOB_ID)
-- Errors   {"ERR", "BATCH_TOO_LARGE", "100"}, {"ERR", "BAD_ARGS"}
--@include base
--@include lanes
--@include retry
--@include batch
local now = now_or_server(ARGV[1])
local count = to_int(ARGV[2])

local ids, err = batch_ids(count, 3)
if not ids then return err end
local out, done = run_batch(ids, function(job_id) return retry_one(job_id, now) end)
if done > 0 then stat_times(now) end
return out
