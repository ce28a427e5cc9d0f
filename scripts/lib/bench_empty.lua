-- Benchmark target "moon+empty": a read_query hook that does nothing, so every command goes
-- through the Lua VM and the proxy's scripted path, and is forwarded unchanged.
function read_query(packet)
end
