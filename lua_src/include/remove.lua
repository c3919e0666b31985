-- remove: delete one job that sits in the named lane. Returns nil or the reason.
local LANE_STATE = {wait = "wait", gwait = "wait", delayed = "delayed",
  failed = "failed", completed = "completed"}

local function remove_one(job_id, lane, now)
  local k_job = job_key(job_id)
  if redis.call("EXISTS", k_job) == 0 then return "NO_JOB" end
  if redis.call("ZSCORE", K_ACTIVE, job_id) then return "ACTIVE" end
  local f = redis.call("HMGET", k_job, "state", "gid")
  local gid = f[2] or ""
  if f[1] ~= LANE_STATE[lane] then return "LANE_MISMATCH" end
  if lane == "gwait" and gid == "" then return "LANE_MISMATCH" end

  local removed
  if lane == "delayed" then
    removed = redis.call("ZREM", K_DELAYED, job_id)
  elseif lane == "gwait" then
    removed = redis.call("LREM", group_key(gid, "wait"), 1, job_id)
  else
    removed = redis.call("LREM", base .. ":" .. lane, 1, job_id)
  end
  if removed == 0 then return "NOT_IN_LANE" end

  redis.call("DEL", k_job)
  redis.call("ZREM", idx_key(f[1]), job_id)
  if lane == "wait" then
    stat_add("waiting", -1)
    stat_add("waiting_total", -1)
  elseif lane == "gwait" then
    stat_add("group_waiting", -1)
    stat_add("waiting_total", -1)
    -- as the reference does it: the group is left ready exactly when it still has
    -- waiting jobs and room; one made ready here gets the reference's score 0
    if group_inflight(gid) < group_limit(gid) and redis.call("LLEN", group_key(gid, "wait")) > 0 then
      if redis.call("ZADD", K_GROUPS_READY, "NX", 0, gid) == 1 then stat_add("groups_ready", 1) end
    elseif redis.call("ZREM", K_GROUPS_READY, gid) == 1 then
      stat_add("groups_ready", -1)
    end
  elseif lane == "completed" then
    stat_add("completed_kept", -1)
  else
    stat_add(lane, -1)
  end
  return nil
end
