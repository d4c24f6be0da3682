-- capacity_lib_sums: helpers pasted into the slot and capacity scripts (`--! include
-- capacity_lib_sums`, expanded by control_plane/scripts.py at load time).
--
-- fmt(x): a number as Redis keeps the counters (up to 6 decimals, no trailing zeros).
-- recount(holders, external, cpu, ram, cpu_hosts, ram_hosts): rebuild the CPU/RAM sums,
--   total (the contract's server:cpu:allocated / server:ram:allocated) and per host, from
--   what holds capacity (slot holders + external work), so the counters cannot drift from
--   the holders. Returns (cpu by host, ram by host). Every key comes from the caller's KEYS.

local EPS = 1e-9
local function fmt(x)
  if x < EPS then return '0' end
  local s = string.format('%.6f', x)
  s = string.gsub(s, '0+$', '')
  s = string.gsub(s, '%.$', '')
  return s
end

-- Rebuild the CPU/RAM sums from what holds capacity (slot holders + external work), in
-- total and per host: the counters cannot drift from the holders.
local function recount(holders_key, external_key, cpu_key, ram_key, cpu_hosts_key, ram_hosts_key)
  local cpu, ram, total_cpu, total_ram = {}, {}, 0, 0
  local function add(raw)
    local e = cjson.decode(raw)
    local host = e.host
    if type(host) ~= 'string' then host = '' end
    local c, r = tonumber(e.cpu) or 0, tonumber(e.ram) or 0
    cpu[host] = (cpu[host] or 0) + c
    ram[host] = (ram[host] or 0) + r
    total_cpu, total_ram = total_cpu + c, total_ram + r
  end
  for _, raw in ipairs(redis.call('HVALS', holders_key)) do add(raw) end
  for _, raw in ipairs(redis.call('HVALS', external_key)) do add(raw) end
  redis.call('SET', cpu_key, fmt(total_cpu))
  redis.call('SET', ram_key, fmt(total_ram))
  redis.call('DEL', cpu_hosts_key, ram_hosts_key)
  for host, value in pairs(cpu) do
    redis.call('HSET', cpu_hosts_key, host, fmt(value))
    redis.call('HSET', ram_hosts_key, host, fmt(ram[host]))
  end
  return cpu, ram
end
