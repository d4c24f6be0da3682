-- tokens_per_page_observe: fold one observed tokens-per-page sample into the learned figure.
--
-- KEYS[1]  string(float): the learned input tokens per PDF page for one document type
-- ARGV[1]  sample: tokens per page measured on one Gemini answer (float > 0)
-- ARGV[2]  weight: EWMA weight of the new sample, 0 < weight <= 1
-- ARGV[3]  default: the figure assumed before any observation
-- ARGV[4]  seed_weight: weight of the very first sample against the default (usually 1)
-- Returns  the new learned figure, as a string (Lua numbers would be truncated to integers).
--
-- One script so concurrent workers never lose each other's samples (read-modify-write).
-- No TTL: the figure is a property of the model and the document type, kept until deleted.

local current = tonumber(redis.call('GET', KEYS[1]))
local sample = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
if current == nil then
  current = tonumber(ARGV[3])
  weight = tonumber(ARGV[4])
end
local updated = current + weight * (sample - current)
local text = string.format('%.4f', updated)
redis.call('SET', KEYS[1], text)
return text
