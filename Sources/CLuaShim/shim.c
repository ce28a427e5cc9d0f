#include "CLuaShim.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

/* The box holding a Swift function pointer: a full userdata of exactly this size, whose magic
 * word Lua code cannot write (no Lua function writes into a userdata's memory). */
#define MOON_FUNCTION_MAGIC 0x4d6f6f6e46756e63ULL /* "MoonFunc" */
struct moon_function_box {
    unsigned long long magic;
    moon_swift_function fn;
};

static long long moon_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

moon_limits *moon_limits_of(lua_State *L) {
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return (moon_limits *)ud;
}

static int moon_trampoline(lua_State *L) {
    int slot = lua_upvalueindex(1);
    struct moon_function_box *box = (struct moon_function_box *)lua_touserdata(L, slot);
    if (lua_type(L, slot) != LUA_TUSERDATA || lua_rawlen(L, slot) != sizeof(struct moon_function_box)
        || box->magic != MOON_FUNCTION_MAGIC) {
        return luaL_error(L, "a built-in function of MoonProxy was tampered with");
    }
    moon_limits *limits = moon_limits_of(L);
    int enforcing = limits ? limits->enforcing : 0;
    /* No allocation fails inside the Swift function: a memory error raised there would unwind
     * through Swift frames. What it allocated is checked once it has returned. */
    if (limits) limits->enforcing = 0;
    int n = box->fn(L);
    if (limits) limits->enforcing = enforcing;
    if (n == MOON_LUA_RAISE) {
        return lua_error(L); /* the Swift frame has returned; raising is safe here */
    }
    if (enforcing && limits->memory_limit > 0 && limits->bytes > limits->memory_limit) {
        limits->exceeded = MOON_LIMIT_MEMORY;
        return luaL_error(L, "not enough memory (the Lua memory limit was reached)");
    }
    return n;
}

void moon_push_swift_function(lua_State *L, moon_swift_function fn, int nup) {
    struct moon_function_box *box = (struct moon_function_box *)lua_newuserdatauv(L, sizeof(struct moon_function_box), 0);
    box->magic = MOON_FUNCTION_MAGIC;
    box->fn = fn;
    if (nup > 0) {
        lua_insert(L, -(nup + 1));
    }
    lua_pushcclosure(L, moon_trampoline, nup + 1);
}

/* Counts the state's bytes and enforces its limit. A state is only ever used by one thread at a
 * time (the engine holds a lock around it), so plain fields do. Shrinking never fails. */
static void *moon_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    moon_limits *limits = (moon_limits *)ud;
    size_t old = ptr != NULL ? osize : 0; /* with ptr NULL, osize encodes the object's kind */
    if (nsize == 0) {
        if (ptr != NULL && limits != NULL) limits->bytes -= (long long)osize;
        free(ptr);
        return NULL;
    }
    if (limits != NULL && limits->enforcing && limits->memory_limit > 0 && nsize > old
        && limits->bytes + (long long)(nsize - old) > limits->memory_limit) {
        limits->exceeded = MOON_LIMIT_MEMORY;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p != NULL && limits != NULL) {
        limits->bytes += (long long)nsize - (long long)old;
    }
    return p;
}

#define MOON_HOOK_COUNT 10000

static void moon_count_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    moon_limits *limits = moon_limits_of(L);
    if (limits == NULL || limits->deadline_ns == 0 || moon_now_ns() < limits->deadline_ns) return;
    limits->exceeded = MOON_LIMIT_TIME;
    /* From now on this thread checks at every instruction, so that the error is raised again
     * as soon as a script's own pcall has caught it. */
    lua_sethook(L, moon_count_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "the hook ran for longer than the Lua time limit");
}

lua_State *moon_newstate(moon_limits *limits) {
    lua_State *L = lua_newstate(moon_alloc, limits);
    if (L == NULL) return NULL;
    /* Hooks make mostly short-lived garbage (a string per packet, small tables): the
     * generational collector deals with that for less work than the incremental one. */
    lua_gc(L, LUA_GCGEN, 0, 0);
    /* Coroutines inherit the hook of the thread that creates them. */
    lua_sethook(L, moon_count_hook, LUA_MASKCOUNT, MOON_HOOK_COUNT);
    return L;
}

int moon_pcall(lua_State *L, int nargs, int nresults, int msgh) {
    moon_limits *limits = moon_limits_of(L);
    if (limits == NULL) return lua_pcall(L, nargs, nresults, msgh);
    int outermost = limits->depth == 0;
    if (outermost) {
        limits->exceeded = 0;
        limits->deadline_ns = limits->timeout_ns > 0 ? moon_now_ns() + limits->timeout_ns : 0;
    }
    int enforcing = limits->enforcing;
    limits->depth++;
    limits->enforcing = 1;
    int status = lua_pcall(L, nargs, nresults, msgh);
    limits->enforcing = enforcing;
    limits->depth--;
    if (outermost) {
        limits->deadline_ns = 0;
        if (limits->exceeded == MOON_LIMIT_TIME) lua_sethook(L, moon_count_hook, LUA_MASKCOUNT, MOON_HOOK_COUNT);
        if (status == LUA_OK) limits->exceeded = 0;
        else if (limits->exceeded == MOON_LIMIT_MEMORY) lua_gc(L, LUA_GCCOLLECT, 0);
    }
    return status;
}

/* MARK: the sandbox */

static int moon_refuse(lua_State *L) {
    return luaL_error(L, "%s is not available in MoonProxy", lua_tostring(L, lua_upvalueindex(1)));
}

static void moon_replace_with_refusal(lua_State *L, const char *library, const char *name) {
    if (lua_getglobal(L, library) != LUA_TTABLE) { lua_pop(L, 1); return; }
    lua_pushfstring(L, "%s.%s", library, name);
    lua_pushcclosure(L, moon_refuse, 1);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* The upvalues of built-in functions are theirs: several of the sandbox's wrappers keep the
 * library function they guard in one. */
static int moon_debug_getupvalue(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    if (lua_iscfunction(L, 1)) return 0;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int moon_debug_setupvalue(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    if (lua_iscfunction(L, 1)) return luaL_error(L, "debug.setupvalue: the upvalues of built-in functions cannot be changed in MoonProxy");
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int moon_check_no_gc(lua_State *L, int metatable);

static int moon_debug_setmetatable(lua_State *L) {
    if (lua_type(L, 1) == LUA_TUSERDATA || lua_type(L, 1) == LUA_TLIGHTUSERDATA)
        return luaL_error(L, "debug.setmetatable: the metatables of userdata cannot be changed in MoonProxy");
    moon_check_no_gc(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int moon_debug_getmetatable(lua_State *L) {
    if (lua_type(L, 1) == LUA_TUSERDATA)
        return luaL_error(L, "debug.getmetatable: the metatables of userdata are not available in MoonProxy");
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static void moon_wrap_debug(lua_State *L, const char *name, lua_CFunction wrapper) {
    if (lua_getglobal(L, "debug") != LUA_TTABLE) { lua_pop(L, 1); return; }
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, wrapper, 1);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* load, loadfile, dofile and require take text only: Lua 5.4 does not verify binary chunks, and a
 * crafted one can make the VM read and write out of bounds. `load` is written here in full rather
 * than wrapping the library's: a wrapper would hold the original in an upvalue or on its stack
 * while a reader function runs, where debug.getupvalue or debug.getlocal could reach it. */
#define MOON_LOAD_READER 5 /* the stack slot the reader keeps its current piece in */

static const char *moon_load_reader(lua_State *L, void *ud, size_t *size) {
    (void)ud;
    luaL_checkstack(L, 2, "too many nested functions");
    lua_pushvalue(L, 1);
    lua_call(L, 0, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        *size = 0;
        return NULL;
    }
    if (!lua_isstring(L, -1)) luaL_error(L, "reader function must return a string");
    lua_replace(L, MOON_LOAD_READER);
    return lua_tolstring(L, MOON_LOAD_READER, size);
}

static int moon_load_text(lua_State *L) {
    /* load(chunk [, chunkname [, mode [, env]]]); the mode is always "t" */
    int env = !lua_isnone(L, 4) ? 4 : 0;
    int status;
    size_t length;
    const char *text = lua_tolstring(L, 1, &length);
    if (text != NULL) {
        const char *name = luaL_optstring(L, 2, text);
        status = luaL_loadbufferx(L, text, length, name, "t");
    } else {
        const char *name = luaL_optstring(L, 2, "=(load)");
        luaL_checktype(L, 1, LUA_TFUNCTION);
        lua_settop(L, MOON_LOAD_READER);
        status = lua_load(L, moon_load_reader, NULL, name, "t");
    }
    if (status != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (env != 0) {
        lua_pushvalue(L, env);
        if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
    }
    return 1;
}

static int moon_loadfile_text(lua_State *L) {
    /* loadfile([filename [, mode [, env]]]) */
    const char *name = luaL_optstring(L, 1, NULL);
    int hasenv = !lua_isnone(L, 3);
    int status = luaL_loadfilex(L, name, "t");
    if (status != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (hasenv) {
        lua_pushvalue(L, 3);
        if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
    }
    return 1;
}

static int moon_dofile_text(lua_State *L) {
    const char *name = luaL_optstring(L, 1, NULL);
    lua_settop(L, 1);
    if (luaL_loadfilex(L, name, "t") != LUA_OK) return lua_error(L);
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - 1;
}

/* xpcall whose message handler is not run for an error raised by the time limit: that error comes
 * from the count hook, and Lua runs the handler with hooks still off, where nothing could stop it. */
static int moon_guarded_handler(lua_State *L) {
    moon_limits *limits = moon_limits_of(L);
    if (limits != NULL && limits->exceeded == MOON_LIMIT_TIME) return 1; /* the error as it is */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int moon_finish_pcall(lua_State *L, int status, lua_KContext extra) {
    if (status != LUA_OK && status != LUA_YIELD) {
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

static int moon_xpcall(lua_State *L) {
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, moon_guarded_handler, 1);
    lua_replace(L, 2);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2);
    int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, moon_finish_pcall);
    return moon_finish_pcall(L, status, 2);
}

/* Metatables with __gc are refused: Lua runs finalizers with hooks off, so a finalizer that spins
 * could not be stopped by the time limit. */
static int moon_check_no_gc(lua_State *L, int metatable) {
    if (lua_type(L, metatable) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        int kind = lua_rawget(L, metatable);
        lua_pop(L, 1);
        if (kind != LUA_TNIL) return luaL_error(L, "__gc metamethods are not available in MoonProxy scripts");
    }
    return 0;
}

static int moon_setmetatable(lua_State *L) {
    moon_check_no_gc(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* require's searcher for Lua files, text only (the library's loads binary chunks as well):
 * package.searchpath over package.path, then the file loaded in text mode. Upvalue 1 is the
 * package table. */
static int moon_searcher_lua_text(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    lua_getfield(L, lua_upvalueindex(1), "searchpath");
    lua_pushvalue(L, 1);
    if (lua_getfield(L, lua_upvalueindex(1), "path") != LUA_TSTRING) return luaL_error(L, "'package.path' must be a string");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2)) return 1; /* the message of the paths tried */
    lua_pop(L, 1);
    const char *filename = lua_tostring(L, -1);
    if (luaL_loadfilex(L, filename, "t") != LUA_OK)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, filename, lua_tostring(L, -1));
    lua_pushstring(L, filename);
    return 2;
}

/* Where the C module loaders wait while they are off (the registry, which scripts cannot reach). */
static const char *const moon_c_loaders_key = "moonproxy.c_loaders";

/* C modules are off unless the operator gives a C path: package.loadlib and require's searchers
 * for C libraries go (a library can open anything the sandbox closed, os.execute included), and
 * the searcher for Lua files loads text only. */
static void moon_restrict_packages(lua_State *L) {
    if (lua_getglobal(L, "package") != LUA_TTABLE) { lua_pop(L, 1); return; }
    int package = lua_gettop(L);
    lua_newtable(L); /* the C loaders, kept: [1] loadlib, [2] and [3] the searchers */
    lua_getfield(L, package, "loadlib");
    lua_rawseti(L, -2, 1);
    lua_pushnil(L);
    lua_setfield(L, package, "loadlib");
    if (lua_getfield(L, package, "searchers") == LUA_TTABLE) {
        int searchers = lua_gettop(L);
        lua_pushvalue(L, package);
        lua_pushcclosure(L, moon_searcher_lua_text, 1);
        lua_rawseti(L, searchers, 2);
        lua_rawgeti(L, searchers, 3);
        lua_rawseti(L, -3, 2);
        lua_rawgeti(L, searchers, 4);
        lua_rawseti(L, -3, 3);
        lua_pushnil(L);
        lua_rawseti(L, searchers, 4);
        lua_pushnil(L);
        lua_rawseti(L, searchers, 3);
    }
    lua_pop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, moon_c_loaders_key);
    lua_pop(L, 1);
}

static int moon_allow_c_modules_protected(lua_State *L) {
    if (lua_getfield(L, LUA_REGISTRYINDEX, moon_c_loaders_key) != LUA_TTABLE) return 0;
    int saved = lua_gettop(L);
    if (lua_getglobal(L, "package") != LUA_TTABLE) return 0;
    int package = lua_gettop(L);
    lua_rawgeti(L, saved, 1);
    lua_setfield(L, package, "loadlib");
    if (lua_getfield(L, package, "searchers") == LUA_TTABLE) {
        lua_rawgeti(L, saved, 2);
        lua_rawseti(L, -2, 3);
        lua_rawgeti(L, saved, 3);
        lua_rawseti(L, -2, 4);
    }
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, moon_c_loaders_key);
    return 0;
}

int moon_allow_c_modules(lua_State *L) {
    lua_pushcfunction(L, moon_allow_c_modules_protected);
    return lua_pcall(L, 0, 0, 0);
}

static int moon_sandbox_protected(lua_State *L) {
    moon_wrap_debug(L, "getupvalue", moon_debug_getupvalue);
    moon_wrap_debug(L, "setupvalue", moon_debug_setupvalue);
    moon_wrap_debug(L, "setmetatable", moon_debug_setmetatable);
    moon_wrap_debug(L, "getmetatable", moon_debug_getmetatable);
    moon_replace_with_refusal(L, "debug", "getregistry");
    moon_replace_with_refusal(L, "debug", "sethook");
    moon_replace_with_refusal(L, "os", "exit");
    moon_replace_with_refusal(L, "os", "execute");
    moon_replace_with_refusal(L, "io", "popen");
    lua_pushcfunction(L, moon_load_text);
    lua_setglobal(L, "load");
    lua_pushcfunction(L, moon_loadfile_text);
    lua_setglobal(L, "loadfile");
    lua_pushcfunction(L, moon_dofile_text);
    lua_setglobal(L, "dofile");
    lua_pushcfunction(L, moon_xpcall);
    lua_setglobal(L, "xpcall");
    moon_restrict_packages(L);
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, moon_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
    return 0;
}

int moon_sandbox(lua_State *L) {
    lua_pushcfunction(L, moon_sandbox_protected);
    return lua_pcall(L, 0, 0, 0);
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

/* Pushes registry[table_ref][registry[key_ref]] and returns 1 if it is a function; else pushes nothing. */
static int moon_push_function_in(lua_State *L, lua_Integer table_ref, int key_ref) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, table_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, key_ref);
    if (lua_rawget(L, -2) == LUA_TFUNCTION) {
        lua_remove(L, -2);
        return 1;
    }
    lua_pop(L, 2);
    return 0;
}

int moon_push_field_or_global(lua_State *L, int table_ref, int key_ref) {
    return moon_push_function_in(L, table_ref, key_ref) || moon_push_function_in(L, LUA_RIDX_GLOBALS, key_ref);
}

void moon_clear_fields(lua_State *L, int table_ref, const int *key_refs, int count) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, table_ref);
    for (int i = 0; i < count; i++) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, key_refs[i]);
        if (lua_rawget(L, -2) != LUA_TNIL) {
            lua_pop(L, 1);
            lua_rawgeti(L, LUA_REGISTRYINDEX, key_refs[i]);
            lua_pushnil(L);
            lua_rawset(L, -3);
        } else {
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

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
