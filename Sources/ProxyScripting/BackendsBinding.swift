import LuaVM

/// `proxy.global.backends`: `#backends`, and `backends[i]` with its address, load, state, type,
/// uuid and connection pool, read live from the proxy; `state` and `uuid` are writable, as are
/// the pool's `min_idle_connections` and `max_idle_connections`.
enum BackendsBinding {
    static let backendsMetatable = "moonproxy.backends"
    static let backendMetatable = "moonproxy.backend"
    static let poolMetatable = "moonproxy.pool"
    static let poolUsersMetatable = "moonproxy.pool.users"

    final class Holder {
        let host: ScriptBackendsHost
        init(_ host: ScriptBackendsHost) { self.host = host }
    }

    final class BackendRef {
        let host: ScriptBackendsHost
        let index: Int
        init(_ host: ScriptBackendsHost, _ index: Int) {
            self.host = host
            self.index = index
        }
    }

    static func push(_ host: ScriptBackendsHost, _ lua: Lua) {
        lua.registerMetatable(named: backendsMetatable, [("__index", backendsIndex), ("__len", backendsLength)])
        lua.registerMetatable(named: backendMetatable, [("__index", backendIndex), ("__newindex", backendNewIndex)])
        lua.registerMetatable(named: poolMetatable, [("__index", poolIndex), ("__newindex", poolNewIndex)])
        lua.registerMetatable(named: poolUsersMetatable, [("__index", poolUsersIndex)])
        lua.push(object: Holder(host), metatable: backendsMetatable)
    }
}

private let backendsIndex: LuaFunction = { L in
    let lua = Lua(L!)
    guard let holder = lua.object(at: 1, metatable: BackendsBinding.backendsMetatable, as: BackendsBinding.Holder.self) else {
        return lua.raise("not the backend list")
    }
    guard let i = lua.toInteger(at: 2), i >= 1, i <= holder.host.backendCount else { lua.pushNil(); return 1 }
    lua.push(object: BackendsBinding.BackendRef(holder.host, i - 1), metatable: BackendsBinding.backendMetatable)
    return 1
}

private let backendsLength: LuaFunction = { L in
    let lua = Lua(L!)
    guard let holder = lua.object(at: 1, metatable: BackendsBinding.backendsMetatable, as: BackendsBinding.Holder.self) else {
        return lua.raise("not the backend list")
    }
    lua.push(holder.host.backendCount)
    return 1
}

private let backendIndex: LuaFunction = { L in
    let lua = Lua(L!)
    guard let ref = lua.object(at: 1, metatable: BackendsBinding.backendMetatable, as: BackendsBinding.BackendRef.self),
          let info = ref.host.backendInfo(ref.index)
    else { lua.pushNil(); return 1 }
    switch lua.toString(at: 2) ?? "" {
    case "dst": ScriptConstants.push(info.dst, lua)
    case "address": lua.push(info.dst.name)
    case "connected_clients": lua.push(info.connectedClients)
    case "state": lua.push(info.state)
    case "type": lua.push(info.type)
    case "uuid": if let uuid = info.uuid { lua.push(uuid) } else { lua.pushNil() }
    case "idling_connections": lua.push(info.idlingConnections)
    case "pool": lua.push(object: ref, metatable: BackendsBinding.poolMetatable)
    default: lua.pushNil()
    }
    return 1
}

private let backendNewIndex: LuaFunction = { L in
    let lua = Lua(L!)
    guard let ref = lua.object(at: 1, metatable: BackendsBinding.backendMetatable, as: BackendsBinding.BackendRef.self) else {
        return lua.raise("not a backend")
    }
    let key = lua.toString(at: 2) ?? "?"
    switch key {
    case "state":
        guard let state = lua.toInteger(at: 3), (0...2).contains(state) else {
            return lua.raiseWithPosition("proxy.global.backends[...].state takes proxy.BACKEND_STATE_UNKNOWN, _UP or _DOWN")
        }
        ref.host.setBackendState(ref.index, state)
    case "uuid":
        switch lua.type(at: 3) {
        case .string: ref.host.setBackendUUID(ref.index, lua.toString(at: 3))
        case .nil: ref.host.setBackendUUID(ref.index, nil)
        default: return lua.raiseWithPosition("proxy.global.backends[...].uuid has to be a string")
        }
    default:
        return lua.raiseWithPosition("proxy.global.backends[...].\(key) is not writable")
    }
    return 0
}

private let poolIndex: LuaFunction = { L in
    let lua = Lua(L!)
    guard let ref = lua.object(at: 1, metatable: BackendsBinding.poolMetatable, as: BackendsBinding.BackendRef.self) else {
        return lua.raise("not a pool")
    }
    let info = ref.host.backendInfo(ref.index)
    switch lua.toString(at: 2) ?? "" {
    case "users": lua.push(object: ref, metatable: BackendsBinding.poolUsersMetatable)
    case "max_idle_connections": lua.push(info?.maxIdleConnections ?? 0)
    case "min_idle_connections": lua.push(info?.minIdleConnections ?? 0)
    default: lua.pushNil()
    }
    return 1
}

private let poolNewIndex: LuaFunction = { L in
    let lua = Lua(L!)
    guard let ref = lua.object(at: 1, metatable: BackendsBinding.poolMetatable, as: BackendsBinding.BackendRef.self) else {
        return lua.raise("not a pool")
    }
    let key = lua.toString(at: 2) ?? "?"
    guard let value = lua.toInteger(at: 3), value >= 0 else {
        return lua.raiseWithPosition("proxy.global.backends[...].pool.\(key) takes a number")
    }
    switch key {
    case "max_idle_connections": ref.host.setPoolLimits(ref.index, min: nil, max: value)
    case "min_idle_connections": ref.host.setPoolLimits(ref.index, min: value, max: nil)
    default: return lua.raiseWithPosition("proxy.global.backends[...].pool.\(key) is not writable")
    }
    return 0
}

/// `pool.users[username]` → `{ cur_idle_connections = n }`.
private let poolUsersIndex: LuaFunction = { L in
    let lua = Lua(L!)
    guard let ref = lua.object(at: 1, metatable: BackendsBinding.poolUsersMetatable, as: BackendsBinding.BackendRef.self) else {
        return lua.raise("not a pool")
    }
    let user = lua.toString(at: 2) ?? ""
    lua.newTable(recordCapacity: 1)
    lua.setField("cur_idle_connections", ref.host.idleConnections(ref.index, user: user))
    return 1
}
