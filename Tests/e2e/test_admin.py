"""The admin interface (--plugins=admin) through the mariadb CLI and PyMySQL: the login is checked
for real, the built-in tables answer, a custom admin script replaces them."""
import subprocess
import time

import pymysql
import pytest

from conftest import BINARY, MARIADB_PORT, free_port, mariadb_cli, wait_for_port
from test_scripting import script


def admin_args(port, *extra):
    return ["--plugins=proxy,admin", f"--admin-address=127.0.0.1:{port}", "--admin-username=boss",
            "--admin-password=s3cret pass"] + list(extra)


def table(result):
    lines = result.stdout.strip().split("\n")
    return [line.split("\t") for line in lines[1:]], lines[0].split("\t")


def test_builtin_tables(start_proxy):
    admin_port = free_port()
    proxy = start_proxy(*admin_args(admin_port), f"--proxy-read-only-backend-addresses=127.0.0.1:{MARIADB_PORT}")
    wait_for_port(admin_port)
    r = mariadb_cli(admin_port, "SELECT * FROM help", user="boss", password="s3cret pass")
    rows, header = table(r)
    assert header == ["command", "description"]
    assert [row[0] for row in rows] == ["SELECT * FROM help", "SELECT * FROM backends", "SELECT * FROM stats",
                                        "SELECT * FROM connections", "SELECT * FROM config", "SELECT * FROM accounts",
                                        "SELECT * FROM pool", "DRAIN BACKEND n [WITHIN seconds]", "UNDRAIN BACKEND n",
                                        "MIGRATE CONNECTION id TO BACKEND n"]

    # traffic through the proxy shows in the admin's tables
    c = proxy.connect()
    with c.cursor() as cur:
        for _ in range(3):
            cur.execute("SELECT 1")
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM no_such_db.t")
        rows, header = table(mariadb_cli(admin_port, "SELECT * FROM backends", user="boss", password="s3cret pass"))
        assert header == ["backend_ndx", "address", "state", "type", "uuid", "connected_clients"]
        assert rows[0][:4] == ["1", f"127.0.0.1:{MARIADB_PORT}", "up", "rw"]
        assert rows[0][5] == "1"
        assert rows[1][:4] == ["2", f"127.0.0.1:{MARIADB_PORT}", "unknown", "ro"]
    c.close()

    stats = dict(table(mariadb_cli(admin_port, "SELECT * FROM stats", user="boss", password="s3cret pass"))[0])
    assert int(stats["proxy.queries"]) >= 4
    assert int(stats["proxy.connections_accepted"]) >= 1  # the fixture probes the port too
    assert int(stats["proxy.bytes_from_clients"]) > 0 and int(stats["proxy.bytes_from_backends"]) > 0
    for source in ("client_protocol_errors", "backend_protocol_errors", "backends_lost", "backend_connect_failures",
                   "errors_sent_by_proxy", "connections_refused"):
        assert f"proxy.{source}" in stats

    config = dict(table(mariadb_cli(admin_port, "SELECT * FROM config", user="boss", password="s3cret pass"))[0])
    assert config["proxy-backend-addresses"] == f"127.0.0.1:{MARIADB_PORT}"

    # PyMySQL as well; unknown statements get a clear error, the connection stays usable
    a = pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="s3cret pass")
    with a.cursor() as cur:
        cur.execute("select * from HELP;")
        assert len(cur.fetchall()) == 10
        with pytest.raises(pymysql.err.OperationalError) as e:
            cur.execute("SELECT 1")
        assert e.value.args[0] == 1105 and "SELECT * FROM help" in e.value.args[1]
        a.ping(reconnect=False)
    a.close()


def test_wrong_credentials_are_refused(start_proxy):
    admin_port = free_port()
    proxy = start_proxy(*admin_args(admin_port))
    wait_for_port(admin_port)
    for user, password in [("boss", "wrong"), ("boss", ""), ("someone", "s3cret pass"), ("BOSS", "s3cret pass")]:
        r = mariadb_cli(admin_port, "SELECT * FROM help", user=user, password=password, check=False)
        assert r.returncode == 1
        assert "ERROR 1045 (28000)" in r.stderr and f"Access denied for user '{user}'" in r.stderr
        assert ("using password: NO" in r.stderr) == (password == "")
    with pytest.raises(pymysql.err.OperationalError) as e:
        pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="s3cret")
    assert e.value.args[0] == 1045
    assert "refused a login as 'boss'" in proxy.log()
    # the proxy itself is unaffected
    c = proxy.connect()
    c.close()


def test_admin_needs_a_password():
    for args in (["--admin-username=boss"], ["--admin-password=x"]):
        r = subprocess.run([BINARY, "--plugins=admin", f"--admin-address=127.0.0.1:{free_port()}"] + args,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1
        assert "needs --admin-username and a password" in r.stderr


def test_custom_admin_script_and_admin_only(start_proxy):
    admin_port = free_port()
    custom = script("""
        function read_query(packet)
          if packet:byte() ~= proxy.COM_QUERY then
            proxy.response = { type = proxy.MYSQLD_PACKET_OK }
            return proxy.PROXY_SEND_RESULT
          end
          proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
            fields = { { name = "you_said" }, { name = "backends" } },
            rows = { { packet:sub(2), #proxy.global.backends } } } }
          return proxy.PROXY_SEND_RESULT
        end
    """)
    proxy_port = free_port()
    start_proxy("--plugins=admin", f"--admin-address=127.0.0.1:{admin_port}", "--admin-username=boss",
                "--admin-password=pw", f"--admin-lua-script={custom}", port=proxy_port, wait=False)
    wait_for_port(admin_port)
    r = mariadb_cli(admin_port, "SELECT * FROM help", user="boss", password="pw")
    assert r.stdout == "you_said\tbackends\nSELECT * FROM help\t1\n"
    # the login is still checked with a custom script
    assert mariadb_cli(admin_port, "SELECT 1", user="boss", password="nope", check=False).returncode == 1
    # only the admin plugin: nothing listens on the proxy port
    time.sleep(0.2)
    with pytest.raises(OSError):
        import socket
        socket.create_connection(("127.0.0.1", proxy_port), timeout=1).close()


def test_the_connections_table_shows_each_links_tls_and_compression(start_proxy):
    import ssl
    import mysql.connector
    admin_port = free_port()
    proxy = start_proxy(*admin_args(admin_port))
    wait_for_port(admin_port)
    plain = proxy.connect(ssl_disabled=True)
    secure = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="root", compress=True, ssl_disabled=False,
                                     ssl_verify_cert=False, database="mysql")
    deadline = time.time() + 10
    while True:  # the login shows within a tick of the proxy's sweeper
        rows, header = table(mariadb_cli(admin_port, "SELECT * FROM connections", user="boss", password="s3cret pass"))
        got = [dict(zip(header, row)) for row in rows]
        if all(g["state"] == "logged in" for g in got) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert header == ["id", "client", "backend", "user", "db", "state", "seconds", "client_tls", "backend_tls",
                      "client_compression", "backend_compression", "server_connection", "pinned", "statements"]
    assert len(got) == 2
    first, second = got
    assert first["user"] == "root" and first["client_tls"] == "NULL" and first["client_compression"] == "NULL"
    assert first["backend"] == f"127.0.0.1:{MARIADB_PORT}" and first["client"].startswith("127.0.0.1:")
    assert second["db"] == "mysql" and second["client_tls"].startswith("TLSv1.") and second["backend_tls"].startswith("TLSv1.")
    assert second["client_compression"] == "zlib" and second["backend_compression"] == "zlib"
    plain.close()
    secure.close()
    deadline = time.time() + 10
    while table(mariadb_cli(admin_port, "SELECT * FROM connections", user="boss", password="s3cret pass"))[0] and time.time() < deadline:
        time.sleep(0.2)
    assert table(mariadb_cli(admin_port, "SELECT * FROM connections", user="boss", password="s3cret pass"))[0] == []
