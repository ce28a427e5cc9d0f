import CLuaShim

/// Swift objects carried in Lua userdata. The userdata holds one retained reference, released by
/// the `__gc` metamethod of its metatable; each kind of object has its own metatable, registered
/// under a name, so that a function can check what it was given (`luaL_testudata` never raises).
extension Lua {
    /// Creates (once) the metatable registered as `name` and leaves it on the stack; `isNew` tells
    /// whether it was just created, so that the caller fills it in.
    @discardableResult
    public func pushMetatable(named name: String, isNew: UnsafeMutablePointer<Bool>? = nil) -> Int32 {
        let created = name.withCString { luaL_newmetatable(L, $0) } != 0
        isNew?.pointee = created
        if created {
            push(function: releaseBoxedObject)
            rawSet(-2, "__gc")
            push(name)
            rawSet(-2, "__name")
            // getmetatable() gives scripts this text, not the table (whose __gc releases the object)
            push(name)
            rawSet(-2, "__metatable")
        }
        return top
    }

    /// Creates the metatable registered as `name` with the given metamethods (`__index`, …), unless
    /// it exists already. The stack is left as it was.
    public func registerMetatable(named name: String, _ metamethods: [(String, LuaFunction)]) {
        var isNew = false
        pushMetatable(named: name, isNew: &isNew)
        if isNew {
            for (key, function) in metamethods { setField(key, function: function) }
        }
        pop()
    }

    /// Pushes a userdata holding `object`, with the metatable registered as `metatable` (which must
    /// exist already).
    public func push<T: AnyObject>(object: T, metatable: String) {
        let block = moon_newuserdata(L, MemoryLayout<UnsafeMutableRawPointer>.size)!
        block.storeBytes(of: Unmanaged.passRetained(object as AnyObject).toOpaque(), as: UnsafeMutableRawPointer.self)
        _ = metatable.withCString { lua_getfield(L, Self.registryIndex, $0) }  // the registry has no metatable
        setMetatable(-2)
    }

    /// The object in the userdata at `index` if its metatable is `metatable`.
    public func object<T: AnyObject>(at index: Int32, metatable: String, as type: T.Type = T.self) -> T? {
        guard let block = metatable.withCString({ luaL_testudata(L, index, $0) }) else { return nil }
        let pointer = block.load(as: UnsafeMutableRawPointer?.self)
        guard let pointer else { return nil }
        return Unmanaged<AnyObject>.fromOpaque(pointer).takeUnretainedValue() as? T
    }
}

private let releaseBoxedObject: LuaFunction = { L in
    let lua = Lua(L!)
    guard lua.type(at: 1) == .userdata, let block = lua.toUserdata(at: 1) else { return 0 }
    if let pointer = block.load(as: UnsafeMutableRawPointer?.self) {
        block.storeBytes(of: nil, as: UnsafeMutableRawPointer?.self)
        Unmanaged<AnyObject>.fromOpaque(pointer).release()
    }
    return 0
}
