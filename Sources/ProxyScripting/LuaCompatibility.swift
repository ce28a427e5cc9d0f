/// Lua code run in every script engine before any script: the Lua 5.1 habits MySQL Proxy scripts
/// rely on, and the per-connection `proxy` fields that are made on first use.
enum LuaBootstrap {
    static let compatibility = #"""
    -- Lua 5.1 names that Lua 5.4 dropped or renamed.
    loadstring = loadstring or load
    unpack = unpack or table.unpack
    table.getn = table.getn or function(t) return #t end
    table.maxn = table.maxn or function(t)
        local n = 0
        for k in pairs(t) do if type(k) == "number" and k > n then n = k end end
        return n
    end
    math.mod = math.mod or math.fmod
    math.pow = math.pow or function(x, y) return x ^ y end
    math.log10 = math.log10 or function(x) return math.log(x, 10) end
    string.gfind = string.gfind or string.gmatch

    local function env_upvalue(f)
        local i = 1
        while true do
            local name = debug.getupvalue(f, i)
            if name == nil then return nil end
            if name == "_ENV" then return i end
            i = i + 1
        end
    end

    local function resolve(f, level)
        if type(f) == "number" then
            local info = debug.getinfo(f + level, "f")
            return info and info.func
        end
        return f
    end

    -- getfenv/setfenv on functions and stack levels, through their _ENV upvalue.
    getfenv = getfenv or function(f)
        f = resolve(f or 1, 2)
        local i = f and env_upvalue(f)
        if i then local _, env = debug.getupvalue(f, i) return env end
        return _G
    end
    setfenv = setfenv or function(f, t)
        local fn = resolve(f, 2)
        local i = fn and env_upvalue(fn)
        if i then debug.upvaluejoin(fn, i, function() return t end, 1) end
        return fn
    end

    -- module(name, package.seeall): the 5.1 way of writing modules.
    function package.seeall(m)
        setmetatable(m, { __index = _G })
    end
    module = module or function(name, ...)
        local m = package.loaded[name]
        if type(m) ~= "table" then
            m = _G[name]
            if type(m) ~= "table" then m = {} end
            package.loaded[name] = m
        end
        m._NAME = name
        m._M = m
        m._PACKAGE = name:match("^(.*)%.[^.]*$") or ""
        for _, option in ipairs({...}) do option(m) end
        -- the module's globals go to m from here on
        local caller = debug.getinfo(2, "f").func
        local i = env_upvalue(caller)
        if i then debug.upvaluejoin(caller, i, function() return m end, 1) end
        return m
    end
    """#

    /// The metatable of each connection's table of `proxy` fields: `proxy.response` and
    /// `proxy.hints` are made empty on first use.
    static let connectionFieldsMetatable = #"""
    return {
        __index = function(t, k)
            if k == "response" or k == "hints" then
                local v = {}
                rawset(t, k, v)
                return v
            end
        end
    }
    """#
}
