import CLuaShim

enum MoonProxyVersion {
    static let string = "0.1.0"

    /// What `--version` prints, in MySQL Proxy's layout.
    static var report: String {
        """
        moonproxy \(string)
          chassis: MoonProxy \(string)
          Lua: \(String(cString: moon_lua_release()))
          -- modules
          proxy: \(string)
          admin: \(string)
        """
    }
}
