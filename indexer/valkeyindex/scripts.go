package valkeyindex

import "github.com/valkey-io/valkey-go"

// The layout the scripts and the Go decoder share (see the package doc, "Key layout").
const (
	// entrySize is the largest entry of a block value: slot (uint16), flags (uint8: tier
	// flags in the low 4 bits, entryPred), then the events epoch (uint16) if there are tier
	// flags, then the prediction epoch (uint16) and expiry (uint32, unix seconds) if
	// entryPred is set; all big-endian. So an entry is 5 bytes (tiers only), 9
	// (prediction only) or 11 (both).
	entrySize = 11
	// entryPred marks an entry with a prediction.
	entryPred = 0x80
	// entryTiers masks an entry's tier flags.
	entryTiers = 0x0f
	// epochSize is the size of one slot's record in the epochs string: events epoch and
	// prediction epoch (uint16 each, big-endian); 0 means the slot is not in use.
	epochSize = 4
	// maxSlots bounds the slot numbers (they are uint16 in entries).
	maxSlots = 1 << 16
)

// namesScript reads the slot table: {version, {slot, worker, slot, worker, ...}}, in one
// atomic step so the version names exactly that table.
//
// KEYS: the version key, the slot -> worker hash.
var namesScript = valkey.NewLuaScriptReadOnly(`
return {redis.call('GET', KEYS[1]) or '', redis.call('HGETALL', KEYS[2])}
`)

// writeScript applies a sequence of entry changes and epoch bumps in order.
//
// KEYS: worker -> slot hash, slot -> worker hash, epochs string, slot table version,
// free slot list, next fresh slot counter, version counter, then one key per operation (a block key; any
// key for a bump). ARGV: now (unix ms), then three values per operation: worker, tier,
// pred. tier: -1 leave the tier flags, 0 clear them, > 0 set them; -2 bump the worker's
// events epoch, -3 bump both its epochs, -4 bump both and free its slot (pred ignored).
// pred: -1 leave, 0 delete, > 0 set the prediction's expiry (unix seconds).
//
// A worker gets a slot the first time something is set for it: a freed one (whose
// epochs were bumped when it was freed, so no entry left in a block value counts for
// the new worker) or a fresh one (epochs 1, 1). A slot whose epoch would pass 65535 is
// retired: its epochs become 0, which no entry carries, and it is never handed out
// again. Every write of a block value drops the entries that no longer count (stale
// epochs, expired predictions), so invisible bytes go with the next write of the key.
// A value with live tier flags has no TTL; one with predictions only expires with its
// latest prediction; an empty one is deleted.
//
// Before the slot table changes, the version is set to a new value: the server's time
// (seconds and microseconds) and a counter, so it differs from every earlier one even
// after the server restarted empty or the keys were flushed (a counter alone would start
// over and could name a different table with a version a client has cached).
var writeScript = valkey.NewLuaScript(`
local now = tonumber(ARGV[1])
local nows = math.floor(now / 1000)
local WS, SW, EP, VER, FREE, NEXT, VERN = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local ep = redis.call('GET', EP) or ''
local eps, slots, touched = {}, {}, false
local function touch()
  if touched then return end
  touched = true
  local t = redis.call('TIME')
  redis.call('SET', VER, t[1] .. '.' .. t[2] .. '.' .. redis.call('INCR', VERN))
end
local function epochs(s)
  local e = eps[s]
  if e then return e[1], e[2] end
  local ev, pe = 0, 0
  if (s + 1) * 4 <= #ep then ev, pe = struct.unpack('>HH', ep, s * 4 + 1) end
  eps[s] = {ev, pe}
  return ev, pe
end
local function setEpochs(s, ev, pe)
  eps[s] = {ev, pe}
  redis.call('SETRANGE', EP, s * 4, struct.pack('>HH', ev, pe))
end
local function slotOf(wk, alloc)
  local s = slots[wk]
  if s == nil then
    s = redis.call('HGET', WS, wk)
    if s then s = tonumber(s) else s = false end
    slots[wk] = s
  end
  if s or not alloc then return s end
  touch()
  local f = redis.call('LPOP', FREE)
  if f then
    s = tonumber(f)
  else
    s = redis.call('INCR', NEXT) - 1
    if s >= 65536 then
      redis.call('DECR', NEXT)
      error('valkeyindex: slot table full (65536 slots handed out; flush the prefix)')
    end
    setEpochs(s, 1, 1)
  end
  redis.call('HSET', WS, wk, s)
  redis.call('HSET', SW, s, wk)
  slots[wk] = s
  return s
end
local function release(wk, s)
  touch()
  redis.call('HDEL', WS, wk)
  redis.call('HDEL', SW, s)
  slots[wk] = false
end
local function bump(wk, both, free)
  local s = slotOf(wk, false)
  if not s then return end
  local ev, pe = epochs(s)
  ev = ev + 1
  if both then pe = pe + 1 end
  if ev > 65535 or pe > 65535 then
    setEpochs(s, 0, 0)
    release(wk, s)
    return
  end
  setEpochs(s, ev, pe)
  if free then
    release(wk, s)
    redis.call('RPUSH', FREE, s)
  end
end
local function pack(s, ef, ev, pe, ex)
  local r
  if ex ~= 0 then
    r = struct.pack('>HB', s, ef + 128)
  else
    r = struct.pack('>HB', s, ef)
  end
  if ef ~= 0 then r = r .. struct.pack('>H', ev) end
  if ex ~= 0 then r = r .. struct.pack('>HI4', pe, ex) end
  return r
end
local function put(k, wk, tf, px)
  local s = slotOf(wk, tf > 0 or px > 0)
  if not s then return end
  local v = redis.call('GET', k) or ''
  local parts, found, tier, maxexp = {}, false, false, 0
  local o = 1
  while o <= #v do
    local es, ef = struct.unpack('>HB', v, o)
    local eev, epe, ex = 0, 0, 0
    o = o + 3
    if bit.band(ef, 15) ~= 0 then
      eev = struct.unpack('>H', v, o)
      o = o + 2
    end
    if bit.band(ef, 128) ~= 0 then
      epe, ex = struct.unpack('>HI4', v, o)
      o = o + 6
    end
    ef = bit.band(ef, 15)
    local cev, cpe = epochs(es)
    if eev ~= cev or cev == 0 then ef = 0 end
    if epe ~= cpe or cpe == 0 or ex <= nows then ex = 0 end
    if es == s and not found then
      found = true
      if tf >= 0 then ef = tf end
      if px >= 0 then ex = px end
    elseif es == s then
      ef, ex = 0, 0
    end
    if ef ~= 0 or ex ~= 0 then
      parts[#parts + 1] = pack(es, ef, cev, cpe, ex)
      if ef ~= 0 then tier = true end
      if ex > maxexp then maxexp = ex end
    end
  end
  if not found and (tf > 0 or px > 0) then
    local cev, cpe = epochs(s)
    local ef, ex = math.max(tf, 0), math.max(px, 0)
    parts[#parts + 1] = pack(s, ef, cev, cpe, ex)
    if ef ~= 0 then tier = true end
    if ex > maxexp then maxexp = ex end
  end
  if #parts == 0 then
    if #v > 0 then redis.call('DEL', k) end
  elseif tier then
    redis.call('SET', k, table.concat(parts))
  else
    redis.call('SET', k, table.concat(parts), 'PX', math.max(maxexp * 1000 - now, 1))
  end
end
for i = 8, #KEYS do
  local a = (i - 8) * 3 + 2
  local wk, tf, px = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if tf == -2 then
    bump(wk, false, false)
  elseif tf == -3 then
    bump(wk, true, false)
  elseif tf == -4 then
    bump(wk, true, true)
  else
    put(KEYS[i], wk, tf, px)
  end
end
return #KEYS - 7
`)
