-- slot_costs_observe: fold one process's measured per-slot costs into the learned costs.
--
-- KEYS[1]  server:costs:learned   hash "host|type" -> JSON {cpu, ram, samples, updated_ms}
-- ARGV[1]  host (OCR_HOST_NAME)
-- ARGV[2]  weight: EWMA weight of the new sample, 0 < weight <= 1
-- ARGV[3]  floor_cpu   ARGV[4] floor_ram: a learned cost never goes below these
-- ARGV[5.. ] groups of 5: type, cpu sample, ram sample, declared cpu, declared ram
--          (the declared costs seed the figure before its first sample)
-- Returns  flat list: type, cpu, ram (strings) for each type given.
--
-- One script so the worker processes of one host never lose each other's samples
-- (read-modify-write). No TTL: the figures are a property of the host and the type; readers
-- ignore a figure not refreshed for an hour (slot_costs.STALE_MS). A sample that is not a
-- finite number leaves the figure as it was (the caller also bounds samples by its host).

local host = ARGV[1]
local weight = tonumber(ARGV[2])
local floor_cpu = tonumber(ARGV[3])
local floor_ram = tonumber(ARGV[4])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local i = 5
while i + 4 <= #ARGV do
  local kind = ARGV[i]
  local cpu_sample = tonumber(ARGV[i + 1])
  local ram_sample = tonumber(ARGV[i + 2])
  local finite = cpu_sample and ram_sample and cpu_sample == cpu_sample
    and ram_sample == ram_sample and math.abs(cpu_sample) < math.huge
    and math.abs(ram_sample) < math.huge
  if not finite then cpu_sample, ram_sample = nil, nil end  -- not a number: the figure stays
  local field = host .. '|' .. kind
  local raw = redis.call('HGET', KEYS[1], field)
  local cpu, ram, samples
  if raw then
    local entry = cjson.decode(raw)
    cpu, ram, samples = tonumber(entry.cpu), tonumber(entry.ram), tonumber(entry.samples) or 0
  else
    cpu, ram, samples = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), 0
  end
  if cpu_sample then
    cpu = math.max(floor_cpu, cpu + weight * (cpu_sample - cpu))
    ram = math.max(floor_ram, ram + weight * (ram_sample - ram))
  end
  samples = samples + 1
  local cpu_text = string.format('%.4f', cpu)
  local ram_text = string.format('%.4f', ram)
  redis.call('HSET', KEYS[1], field, cjson.encode({
    cpu = tonumber(cpu_text), ram = tonumber(ram_text), samples = samples, updated_ms = now_ms
  }))
  out[#out + 1] = kind
  out[#out + 1] = cpu_text
  out[#out + 1] = ram_text
  i = i + 5
end
return out
