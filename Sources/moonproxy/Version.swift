import CLuaShim

enum MoonProxyVersion {
    static let string = "0.1.0"
    /// The SwiftNIO release MoonProxy is built with (SwiftNIO has no version at run time; a unit
    /// test holds this to the one Package.resolved pins).
    static let swiftNIO = "2.101.3"

    /// What `--version` prints, in MySQL Proxy's layout.
    static var report: String {
        """
        moonproxy \(string)
          chassis: MoonProxy \(string)
          Lua: \(String(cString: moon_lua_release()))
          SwiftNIO: \(swiftNIO)
          -- modules
          proxy: \(string)
          admin: \(string)
        """
    }
}
