#include "CLuaShim.h"
#include <stdio.h>
#include <stdlib.h>
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

/* Counts the state's bytes. A state is only ever used by one thread at a time (the engine
 * holds a lock around it), so a plain counter does: an atomic one cost a locked instruction on
 * every allocation of every hook. */
static void *moon_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    long long *bytes = (long long *)ud;
    if (nsize == 0) {
        if (ptr != NULL && bytes != NULL) *bytes -= (long long)osize;
        free(ptr);
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p != NULL && bytes != NULL) {
        *bytes += (long long)nsize - (ptr != NULL ? (long long)osize : 0);
    }
    return p;
}

lua_State *moon_newstate(long long *bytes) {
    lua_State *L = lua_newstate(moon_alloc, bytes);
    /* Hooks make mostly short-lived garbage (a string per packet, small tables): the
     * generational collector deals with that for less work than the incremental one. */
    if (L != NULL) lua_gc(L, LUA_GCGEN, 0, 0);
    return L;
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

static int moon_traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
            return 1;
        }
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

void moon_push_traceback_handler(lua_State *L) {
    lua_pushcfunction(L, moon_traceback);
}

struct moon_dump_buffer {
    char *data;
    size_t size;
    size_t capacity;
    int failed;
};

/* lua_dump's writer: a plain growing C buffer (a luaL_Buffer would have to stay on top of the
 * stack, below which lua_dump keeps the function). */
static int moon_dump_writer(lua_State *L, const void *p, size_t size, void *ud) {
    struct moon_dump_buffer *b = (struct moon_dump_buffer *)ud;
    (void)L;
    if (b->size + size > b->capacity) {
        size_t capacity = b->capacity ? b->capacity : 4096;
        while (capacity < b->size + size) capacity *= 2;
        char *grown = realloc(b->data, capacity);
        if (grown == NULL) { b->failed = 1; return 1; }
        b->data = grown;
        b->capacity = capacity;
    }
    memcpy(b->data + b->size, p, size);
    b->size += size;
    return 0;
}

static int moon_dump_protected(lua_State *L) {
    /* the function is at index 1, its dump goes in a light userdata at index 2 */
    struct moon_dump_buffer *b = (struct moon_dump_buffer *)lua_touserdata(L, 2);
    lua_settop(L, 1);
    lua_dump(L, moon_dump_writer, b, 0);
    if (b->failed) return luaL_error(L, "not enough memory to dump the script");
    lua_pushlstring(L, b->data ? b->data : "", b->size);
    return 1;
}

int moon_dump_function(lua_State *L) {
    struct moon_dump_buffer b = { NULL, 0, 0, 0 };
    lua_pushcfunction(L, moon_dump_protected);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, &b);
    int status = lua_pcall(L, 2, 1, 0);
    free(b.data);
    return status;
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
void *moon_newuserdata(lua_State *L, size_t size) { return lua_newuserdatauv(L, size, 1); }
int moon_loadbuffer(lua_State *L, const char *buffer, size_t size, const char *chunkname, const char *mode) {
    return luaL_loadbufferx(L, buffer, size, chunkname, mode);
}
const char *moon_lua_release(void) { return LUA_RELEASE; }
