-- take: pick the next runnable job id without leasing it yet.
local MAX_GROUP_POPS = 10
local K_LANE_RR = base .. ":lane:rr"

local function take_ungrouped()
  local job_id = redis.call("LPOP", K_WAIT)
  if not job_id then return nil end
  stat_add("waiting", -1)
  stat_add("waiting_total", -1)
  return job_id, ""
end

-- Pops the oldest ready group; a group found at its limit goes back with score
-- now + 1 so the next group gets its turn. At most MAX_GROUP_POPS pops per call.
local function take_grouped(now)
  for _ = 1, MAX_GROUP_POPS do
    local popped = redis.call("ZPOPMIN", K_GROUPS_READY)
    if #popped == 0 then return nil end
    local gid = popped[1]
    stat_add("groups_ready", -1)
    local inflight = group_inflight(gid)
    local limit = group_limit(gid)
    if inflight >= limit then
      if redis.call("ZADD", K_GROUPS_READY, "NX", now + 1, gid) == 1 then
        stat_add("groups_ready", 1)
      end
    else
      local job_id = redis.call("LPOP", group_key(gid, "wait"))
      if job_id then
        redis.call("INCR", group_key(gid, "inflight"))
        stat_add("group_waiting", -1)
        stat_add("waiting_total", -1)
        group_ready_if_room(gid, now)
        return job_id, gid
      end
    end
  end
  return nil
end

-- lane:rr "0" tries the grouped lane first, "1" the ungrouped one.
local function take_next(now)
  local grouped_first = to_int(redis.call("GET", K_LANE_RR)) == 0
  local job_id, gid
  if grouped_first then
    job_id, gid = take_grouped(now)
    if not job_id then job_id, gid = take_ungrouped() end
  else
    job_id, gid = take_ungrouped()
    if not job_id then job_id, gid = take_grouped(now) end
  end
  return job_id, gid, grouped_first
end

-- Flips after each successful reserve, whichever lane served it.
local function flip_lanes(grouped_first)
  redis.call("SET", K_LANE_RR, grouped_first and "1" or "0")
end
