enum ProxyScriptingPlaceholder {}
