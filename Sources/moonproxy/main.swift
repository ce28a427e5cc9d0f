import CLuaShim
let L = luaL_newstate()
print(moon_open_libs(L), String(cString: lua_typename(L, 0)))
lua_close(L)
