#ifndef MOONPROXY_CLUASHIM_H
#define MOONPROXY_CLUASHIM_H

#include <stddef.h>
#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>

/*
 * Lua reports errors with longjmp. A longjmp across Swift frames is undefined behaviour, so Swift code
 * never calls lua_error/luaL_error itself. Instead a Swift function exposed to Lua returns
 * MOON_LUA_RAISE after pushing the error value, and the C trampoline below raises it once the Swift
 * frame has returned.
 */
#define MOON_LUA_RAISE (-1)

typedef int (*moon_swift_function)(lua_State *L);

/* Pushes a C closure calling `fn`; `nup` values on the stack become upvalues 2...nup+1 (upvalue 1
 * holds fn, in a userdata that Lua code can neither forge nor, with the sandbox, replace). */
void moon_push_swift_function(lua_State *L, moon_swift_function fn, int nup);

/*
 * A state's limits and accounting. Allocations are counted in `bytes`; while Lua code runs inside
 * moon_pcall (and not while a Swift function runs) an allocation that would take `bytes` past
 * `memory_limit` fails, which Lua reports as a memory error. A call through moon_pcall that runs
 * for longer than `timeout_ns` is aborted with an error raised from the count hook (and raised again
 * at every instruction until it reaches moon_pcall, so that a script's own pcall cannot keep it
 * alive). `exceeded` tells why the last moon_pcall failed: 0, MOON_LIMIT_MEMORY or MOON_LIMIT_TIME.
 */
#define MOON_LIMIT_MEMORY 1
#define MOON_LIMIT_TIME 2

typedef struct moon_limits {
    long long bytes;
    long long memory_limit; /* 0: none */
    long long timeout_ns;   /* 0: none */
    long long deadline_ns;  /* while a limited call runs */
    int enforcing;          /* allocations may fail now */
    int depth;              /* moon_pcall nesting */
    int exceeded;
} moon_limits;

/* A new state using `limits` (owned by the caller, outliving the state), with the count hook set. */
lua_State *moon_newstate(moon_limits *limits);
moon_limits *moon_limits_of(lua_State *L);

/* Replaces what a script could use to crash, stop or bypass the proxy: debug.setupvalue on
 * built-in (C) functions, debug.setmetatable on userdata, debug.getregistry, debug.sethook,
 * os.exit, os.execute, io.popen, binary chunks in load/loadfile/dofile/require, the upvalues of
 * built-in functions (debug.getupvalue), C modules (package.loadlib and require's C searchers),
 * __gc metamethods (finalizers run with hooks off), and xpcall message handlers run after the
 * time limit. */
int moon_sandbox(lua_State *L);

/* Gives scripts C modules back (package.loadlib, require's C searchers): the operator set a C
 * path. Runs protected; returns a lua status code. */
int moon_allow_c_modules(lua_State *L);

/* Installs a panic handler that logs the message to stderr before Lua aborts. */
void moon_set_panic_handler(lua_State *L);

/* Runs `luaL_openlibs` inside a protected call; returns a lua status code. */
int moon_open_libs(lua_State *L);

/* Pushes a message handler for lua_pcall that appends a traceback to the error message. */
void moon_push_traceback_handler(lua_State *L);

/* Dumps the function at the top of the stack as a binary chunk and pushes it as a string.
 * Runs protected; returns a lua status code (the error message is pushed instead on failure). */
int moon_dump_function(lua_State *L);

/* lua_pcall under the state's limits (see moon_limits). */
int moon_pcall(lua_State *L, int nargs, int nresults, int msgh);

/* The hot path of a hook call, in one crossing each (neither allocates, so neither can raise):
 *
 * moon_push_field_or_global pushes the function stored under the key registry[key_ref] in the
 * table registry[table_ref], or else in the globals, and returns 1; when neither holds a
 * function it pushes nothing and returns 0.
 *
 * moon_clear_fields sets table[registry[k]] to nil for each of the `count` key references in
 * `key_refs` whose value is not nil already (reading first spares the write and its barrier in
 * the usual case, when there is nothing to clear), in the table registry[table_ref]. */
int moon_push_field_or_global(lua_State *L, int table_ref, int key_ref);
void moon_clear_fields(lua_State *L, int table_ref, const int *key_refs, int count);

/* Thin wrappers for C macros Swift cannot import. */
void moon_pop(lua_State *L, int n);
int moon_upvalueindex(int i);
void moon_newtable(lua_State *L);
const char *moon_tostring(lua_State *L, int idx, size_t *len);
int moon_isnoneornil(lua_State *L, int idx);
lua_Integer moon_tointeger(lua_State *L, int idx, int *isnum);
lua_Number moon_tonumber(lua_State *L, int idx, int *isnum);
void moon_remove(lua_State *L, int idx);
void moon_insert(lua_State *L, int idx);
void moon_replace(lua_State *L, int idx);
int moon_registryindex(void);
void *moon_newuserdata(lua_State *L, size_t size);
int moon_loadbuffer(lua_State *L, const char *buffer, size_t size, const char *chunkname, const char *mode);

/* "Lua 5.4.x": the release this binary was built against. */
const char *moon_lua_release(void);

#endif
