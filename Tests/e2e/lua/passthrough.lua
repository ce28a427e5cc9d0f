-- Every hook defined, none deciding anything: the proxy must behave exactly as without a script.
function connect_server() end
function read_handshake() end
function read_auth() end
function read_auth_result(auth) end
function read_query(packet) end
function read_query_result(inj) end
function disconnect_client() end
