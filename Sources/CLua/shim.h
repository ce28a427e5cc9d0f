#ifndef MOONPROXY_CLUA_SHIM_H
#define MOONPROXY_CLUA_SHIM_H
/* Debian's liblua5.4-dev installs its headers under <lua5.4/...>; pkg-config lua5.4 adds that directory. */
#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>
#endif
