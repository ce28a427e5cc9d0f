#include "CLuaShim.h"
#include <stdio.h>
#include <string.h>

static int moon_trampoline(lua_State *L) {
    moon_swift_function fn = (moon_swift_function)lua_touserdata(L, lua_upvalueindex(1));
    int n = fn(L);
    if (n == MOON_LUA_RAISE) {
        return lua_error(L); /* the Swift frame has returned; raising is safe here */
    }
    return n;
}

void moon_push_swift_function(lua_State *L, moon_swift_function fn, int nup) {
    lua_pushlightuserdata(L, (void *)fn);
    if (nup > 0) {
        lua_insert(L, -(nup + 1));
    }
    lua_pushcclosure(L, moon_trampoline, nup + 1);
}

static int moon_panic(lua_State *L) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "moonproxy: unprotected Lua error (panic): %s\n", msg ? msg : "(error object is not a string)");
    fflush(stderr);
    return 0; /* Lua aborts after this returns */
}

void moon_set_panic_handler(lua_State *L) {
    lua_atpanic(L, moon_panic);
}

static int moon_openlibs_protected(lua_State *L) {
    luaL_openlibs(L);
    return 0;
}

int moon_open_libs(lua_State *L) {
    lua_pushcfunction(L, moon_openlibs_protected);
    return lua_pcall(L, 0, 0, 0);
}

int moon_pcall(lua_State *L, int nargs, int nresults, int msgh) { return lua_pcall(L, nargs, nresults, msgh); }
void moon_pop(lua_State *L, int n) { lua_pop(L, n); }
int moon_upvalueindex(int i) { return lua_upvalueindex(i); }
void moon_newtable(lua_State *L) { lua_newtable(L); }
const char *moon_tostring(lua_State *L, int idx, size_t *len) { return lua_tolstring(L, idx, len); }
int moon_isnoneornil(lua_State *L, int idx) { return lua_isnoneornil(L, idx); }
lua_Integer moon_tointeger(lua_State *L, int idx, int *isnum) { return lua_tointegerx(L, idx, isnum); }
lua_Number moon_tonumber(lua_State *L, int idx, int *isnum) { return lua_tonumberx(L, idx, isnum); }
void moon_remove(lua_State *L, int idx) { lua_remove(L, idx); }
void moon_insert(lua_State *L, int idx) { lua_insert(L, idx); }
void moon_replace(lua_State *L, int idx) { lua_replace(L, idx); }
int moon_registryindex(void) { return LUA_REGISTRYINDEX; }
int moon_dostring(lua_State *L, const char *chunk, const char *chunkname) {
    int status = luaL_loadbuffer(L, chunk, strlen(chunk), chunkname);
    if (status != LUA_OK) return status;
    return lua_pcall(L, 0, LUA_MULTRET, 0);
}
const char *moon_lua_release(void) { return LUA_RELEASE; }
