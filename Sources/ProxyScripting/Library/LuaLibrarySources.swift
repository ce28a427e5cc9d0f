// MySQL Proxy's modules that are written in Lua, compiled into the binary: LuaModules registers
// them in package.preload, so `require("proxy.tokenizer")` works with no files installed, and a
// module of the same name on package.path does not replace them. Each module's source is in its
// own file, LuaLibrarySources+Proxy<Module>.swift. (mysql.proto, mysql.tokenizer, mysql.password and
// chassis are Swift: see LuaModules.swift and MySQLProtoModule.swift.)

enum LuaLibrarySources {
    static let modules: [(name: String, source: String)] = [
        ("proxy.tokenizer", proxyTokenizer),
        ("proxy.commands", proxyCommands),
        ("proxy.balance", proxyBalance),
        ("proxy.auto-config", proxyAutoConfig),
        ("proxy.test", proxyTest),
        ("proxy.parser", proxyParser),
    ]
}
