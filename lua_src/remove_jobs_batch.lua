-- remove_jobs_batch: remove_job for up to 100 ids of one lane at once.
-- KEYS[1]  anchor "{Q}:meta"
-- ARGV     lane, count, id1..idN, [now_ms] ("0" or missing = server clock)
-- Reply    flat list: id, "OK" | id, "ERR", reason (NO_JOB, ACTIVE, LANE_MISMATCH,
--          NOT_IN_LANE, BAD_JOB_ID)
-- Errors   {"ERR", "BATCH_TOO_LARGE", "100"}, {"ERR", "BAD_LANE"}, {"ERR", "BAD_ARGS"}
--@include base
--@include lanes
--@include remove
--@include batch
local lane = ARGV[1] or ""
local count = to_int(ARGV[2])

if count <= 0 then return {} end
if count > MAX_BATCH then return {"ERR", "BATCH_TOO_LARGE", tostring(MAX_BATCH)} end
if not LANE_STATE[lane] then return {"ERR", "BAD_LANE"} end
local ids, err = batch_ids(count, 3)
if not ids then return err end
local now = now_or_server(ARGV[3 + count])
local out, done = run_batch(ids, function(job_id) return remove_one(job_id, lane, now) end)
if done > 0 then stat_times(now) end
return out
