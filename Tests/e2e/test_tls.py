"""TLS on both sides of the proxy, with real clients and the test MariaDB, which scripts/test starts
with certificates made by openssl (MOON_TEST_CERTS). The server's own view of each link
(`Ssl_version`, REQUIRE SSL accounts) is the oracle for the backend side; the clients' libraries
(libmariadb's `mariadb` CLI, PyMySQL over Python's ssl module, mysql-connector-python, MariaDB
Connector/Python) for the client side."""
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pymysql
import pytest

from conftest import MARIADB_PORT, WORKDIR, direct

CERTS = Path(os.environ.get("MOON_TEST_CERTS", ""))
if not (CERTS / "ca.pem").exists():
    pytest.skip("scripts/test makes the test certificates (MOON_TEST_CERTS)", allow_module_level=True)

CA, CERT, KEY = str(CERTS / "ca.pem"), str(CERTS / "server.pem"), str(CERTS / "server-key.pem")
CLIENT_CERT, CLIENT_KEY = str(CERTS / "client.pem"), str(CERTS / "client-key.pem")

CLIENT_SSL = 2048
SSL_QUERY = "SELECT variable_value FROM information_schema.session_status WHERE variable_name = 'Ssl_version'"


@pytest.fixture(scope="module", autouse=True)
def tls_accounts():
    c = direct()
    with c.cursor() as cur:
        for stmt in [
            "CREATE USER IF NOT EXISTS 'tlsonly'@'%' IDENTIFIED BY 'tlspass' REQUIRE SSL",
            "GRANT SELECT ON *.* TO 'tlsonly'@'%'",
            "CREATE USER IF NOT EXISTS 'x509user'@'%' IDENTIFIED BY 'xpass' REQUIRE X509",
            "GRANT SELECT ON *.* TO 'x509user'@'%'",
        ]:
            cur.execute(stmt)
    c.close()


def cli(port, sql="SELECT 1", user="root", password="", tls=True, extra=(), check=True):
    """The `mariadb` CLI (libmariadb) with or without TLS; returns the completed process."""
    args = ["mariadb", "-h127.0.0.1", f"-P{port}", f"-u{user}", "--batch", "--skip-column-names"]
    if password:
        args.append(f"-p{password}")
    args += ["--ssl"] if tls else ["--skip-ssl"]
    args += list(extra) + ["-e", sql]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"mariadb failed ({r.returncode}): {r.stderr}")
    return r


def greeting_capabilities(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
            data += s.recv(4096)
        g = data[4:]
        pos = g.index(b"\0", 1) + 1 + 4 + 9
        return struct.unpack_from("<H", g, pos)[0]


def tls_version_seen_by_server(port, **kw):
    c = pymysql.connect(host="127.0.0.1", port=port, user=kw.pop("user", "root"), password=kw.pop("password", ""), **kw)
    try:
        with c.cursor() as cur:
            cur.execute(SSL_QUERY)
            return cur.fetchone()[0]
    finally:
        c.close()


def wait_for_log(proxy, text, timeout=10):
    deadline = time.time() + timeout
    while text not in proxy.log() and time.time() < deadline:
        time.sleep(0.05)
    return text in proxy.log()


def no_verify():
    return {"check_hostname": False, "verify_mode": ssl.CERT_NONE}


def test_the_greeting_offers_tls_when_the_backend_does_and_never_with_skip_ssl(start_proxy):
    assert greeting_capabilities(MARIADB_PORT) & CLIENT_SSL
    assert greeting_capabilities(start_proxy().port) & CLIENT_SSL
    assert not greeting_capabilities(start_proxy("--skip-ssl").port) & CLIENT_SSL
    # a client that insists on TLS (by verifying the server) is told it is not there
    r = cli(start_proxy("--skip-ssl").port, extra=[f"--ssl-ca={CA}", "--ssl-verify-server-cert"], check=False)
    assert r.returncode != 0 and "2026" in r.stderr


def test_tls_on_both_links_by_default_as_the_server_sees_it(start_proxy):
    proxy = start_proxy()
    # the server's view of the proxy's link is what it would be of the client's own
    assert cli(proxy.port, SSL_QUERY).stdout.strip().startswith("TLSv1.")
    assert cli(proxy.port, SSL_QUERY, tls=False).stdout.strip() == ""
    # an account that requires TLS logs in through the proxy exactly when the client uses TLS
    assert cli(proxy.port, "SELECT current_user()", user="tlsonly", password="tlspass").stdout.strip() == "tlsonly@%"
    r = cli(proxy.port, user="tlsonly", password="tlspass", tls=False, check=False)
    assert r.returncode == 1 and "1045" in r.stderr
    # clients of every library
    assert tls_version_seen_by_server(proxy.port, ssl=no_verify()).startswith("TLSv1.")
    import mysql.connector
    c = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="tlsonly", password="tlspass")
    cur = c.cursor()
    cur.execute(SSL_QUERY)
    assert cur.fetchone()[0].startswith("TLSv1.")
    c.close()


def test_a_verified_certificate_and_a_client_certificate(start_proxy):
    proxy = start_proxy(f"--ssl-cert={CERT}", f"--ssl-key={KEY}", f"--ssl-ca={CA}",
                        f"--proxy-backend-ssl-cert={CLIENT_CERT}", f"--proxy-backend-ssl-key={CLIENT_KEY}")
    verify = [f"--ssl-ca={CA}", "--ssl-verify-server-cert"]
    assert cli(proxy.port, SSL_QUERY, extra=verify).stdout.strip().startswith("TLSv1.")
    with_cert = verify + [f"--ssl-cert={CLIENT_CERT}", f"--ssl-key={CLIENT_KEY}"]
    assert cli(proxy.port, "SELECT current_user()", user="x509user", password="xpass", extra=with_cert).stdout.strip() == "x509user@%"
    # a client certificate from a CA the proxy does not trust fails the handshake
    other = verify + [f"--ssl-cert={CERTS / 'other-client.pem'}", f"--ssl-key={CERTS / 'other-client-key.pem'}"]
    r = cli(proxy.port, extra=other, check=False)
    assert r.returncode != 0 and "2026" in r.stderr
    assert wait_for_log(proxy, "TLS with the client failed")
    # the self-signed certificate made at startup fails verification, as MariaDB's does
    r = cli(start_proxy().port, extra=verify, check=False)
    assert r.returncode != 0 and "2026" in r.stderr


@pytest.mark.parametrize("mode,client_tls,server_sees_tls", [
    ("off", True, False),        # client TLS, server plaintext: the login's sequence ids differ by one
    ("required", False, True),   # the other way round
    ("preferred", True, True),
    ("preferred", False, False),
])
def test_links_negotiated_independently_with_every_auth_plugin(start_proxy, mode, client_tls, server_sees_tls):
    proxy = start_proxy(f"--proxy-backend-ssl={mode}")
    for user, password in [("root", ""), ("nat", "natpass"), ("ed", "edpass")]:  # ed25519: an auth switch
        seen = cli(proxy.port, SSL_QUERY, user=user, password=password, tls=client_tls).stdout.strip()
        assert bool(seen) == server_sees_tls, (user, seen)
        r = cli(proxy.port, user=user, password="wrong", tls=client_tls, check=False)
        assert "1045" in r.stderr
    # COM_CHANGE_USER after a login whose sequence ids were shifted
    import mariadb
    kw = {"ssl": True, "ssl_verify_cert": False} if client_tls else {}
    c = mariadb.connect(host="127.0.0.1", port=proxy.port, user="root", password="", **kw)
    c.change_user("ed", "edpass", None)
    cur = c.cursor()
    cur.execute("SELECT current_user()")
    assert cur.fetchone()[0] == "ed@%"
    c.close()


def test_require_secure_transport(start_proxy):
    proxy = start_proxy("--require-secure-transport")
    r = cli(proxy.port, tls=False, check=False)
    assert r.returncode == 1 and "3159" in r.stderr and "insecure transport" in r.stderr
    assert cli(proxy.port).stdout.strip() == "1"


def test_backend_verification(start_proxy):
    ok = start_proxy("--proxy-backend-ssl=verify-identity", f"--proxy-backend-ssl-ca={CA}")
    assert cli(ok.port, SSL_QUERY, tls=False).stdout.strip().startswith("TLSv1.")
    # a backend whose certificate does not chain to the configured CA
    bad = start_proxy("--proxy-backend-ssl=verify-ca", f"--proxy-backend-ssl-ca={CERTS / 'other-ca.pem'}")
    r = cli(bad.port, check=False)
    assert r.returncode == 1 and "1105" in r.stderr and "SSL connection error: TLS with the backend server failed: CERTIFICATE_VERIFY_FAILED" in r.stderr
    assert wait_for_log(bad, "TLS with the backend failed")
    # a backend named by a host name: checked against the certificate's names
    named = start_proxy("--proxy-backend-ssl=verify-identity", f"--proxy-backend-ssl-ca={CA}",
                        f"--proxy-backend-addresses=localhost:{MARIADB_PORT}", backend=False)
    assert cli(named.port, SSL_QUERY).stdout.strip().startswith("TLSv1.")
    # nobody else was affected
    assert cli(ok.port).stdout.strip() == "1"


def test_hostile_tls_clients_cost_only_their_connection(start_proxy):
    proxy = start_proxy()
    ssl_request = struct.pack("<IIB", 0x0200 | CLIENT_SSL | 0x8000 | 0x80000, 1 << 24, 33) + b"\0" * 23

    def after_greeting():
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
            data += s.recv(4096)
        return s

    # garbage where the ClientHello belongs, in the same write as the SSLRequest
    s = after_greeting()
    s.sendall(struct.pack("<I", len(ssl_request))[:3] + b"\x01" + ssl_request + b"GET / HTTP/1.1\r\n\r\n" * 4)
    s.settimeout(5)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    assert got[:1] in (b"", b"\x15")  # nothing, or a TLS alert record
    s.close()
    # a client that stops in the middle of its handshake
    stalled = after_greeting()
    stalled.sendall(struct.pack("<I", len(ssl_request))[:3] + b"\x01" + ssl_request + b"\x16\x03\x01\x02\x00\x01")
    # everybody else is served meanwhile
    assert cli(proxy.port, SSL_QUERY).stdout.strip().startswith("TLSv1.")
    stalled.close()
    deadline = time.time() + 10
    while "TLS with the client failed" not in proxy.log() and time.time() < deadline:
        time.sleep(0.1)
    assert "TLS with the client failed" in proxy.log()
    assert proxy.proc.poll() is None


def test_scripts_see_each_links_tls(start_proxy, tmp_path):
    script = tmp_path / "tls.lua"
    script.write_text("""
function read_query(packet)
    if packet:sub(2) ~= "SELECT 'tls'" then return end
    local c, s = proxy.connection.client.ssl, proxy.connection.server.ssl
    proxy.response.type = proxy.MYSQLD_PACKET_OK
    proxy.response.resultset = {
        fields = { { name = "client", type = proxy.MYSQL_TYPE_STRING }, { name = "server", type = proxy.MYSQL_TYPE_STRING },
                   { name = "client_cipher", type = proxy.MYSQL_TYPE_STRING }, { name = "server_cipher", type = proxy.MYSQL_TYPE_STRING } },
        rows = { { c and c.version or "none", s and s.version or "none", c and c.cipher or "none", s and s.cipher or "none" } },
    }
    return proxy.PROXY_SEND_RESULT
end
""")
    proxy = start_proxy(f"--proxy-lua-script={script}", "--proxy-backend-ssl=required")
    client, server, _, server_cipher = cli(proxy.port, "SELECT 'tls'").stdout.strip().split("\t")
    assert client.startswith("TLSv1.") and server.startswith("TLSv1.")
    assert cli(proxy.port, "SELECT 'tls'", tls=False).stdout.strip().split("\t")[0] == "none"
    # the ciphers: the client's as its own TLS library names it, the server's as the server does
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", ssl=no_verify())
    with c.cursor() as cur:
        cur.execute("SELECT 'tls'")
        row = cur.fetchone()
        assert row[2] == c._sock.cipher()[0], row
        cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")  # not answered by the script: the server's view
        assert cur.fetchone()[1] == row[3] == server_cipher
    c.close()


def test_sighup_reloads_the_certificate_for_new_connections_only(start_proxy, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(CERT, cert)
    shutil.copy(KEY, key)
    proxy = start_proxy(f"--ssl-cert={cert}", f"--ssl-key={key}")

    def peer_certificate(conn):
        return conn._sock.getpeercert(binary_form=True)

    first = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", ssl=no_verify())
    before = peer_certificate(first)
    # the reload comes while the first connection streams a result of 100 MB: it goes on
    streaming = first.cursor(pymysql.cursors.SSCursor)
    streaming.execute("SELECT seq, REPEAT('x', 1000) FROM mysql.seq_1_to_100000")
    received = sum(len(streaming.fetchone()[1]) for _ in range(1000))
    shutil.copy(CERTS / "server2.pem", cert)
    shutil.copy(CERTS / "server2-key.pem", key)
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reloaded" not in proxy.log() and time.time() < deadline:
        time.sleep(0.1)
    second = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", ssl=no_verify())
    assert peer_certificate(second) != before
    received += sum(len(row[1]) for row in streaming)
    assert received == 100_000 * 1000
    streaming.close()
    assert peer_certificate(first) == before
    # a broken certificate keeps the one in use, and says why
    cert.write_text("not a certificate\n")
    proxy.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "keeping the TLS certificate" not in proxy.log() and time.time() < deadline:
        time.sleep(0.1)
    assert "keeping the TLS certificate" in proxy.log()
    third = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", ssl=no_verify())
    assert peer_certificate(third) == peer_certificate(second)
    for c in (first, second, third):
        c.close()


def test_large_results_stream_through_tls(start_proxy):
    proxy = start_proxy("--proxy-backend-ssl=required")
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", ssl=no_verify(),
                        cursorclass=pymysql.cursors.SSCursor, read_timeout=120)
    with c.cursor() as cur:
        cur.execute("SELECT REPEAT('y', 65536) FROM mysql.seq_1_to_1000")
        total = sum(len(row[0]) for row in cur)
    assert total == 65536 * 1000
    c.close()


@pytest.mark.parametrize("password, accepted", [("secret", True), ("wrong", False)])
def test_a_password_sent_in_clear_over_tls_goes_on_rsa_encrypted(start_proxy, password, accepted):
    """caching_sha2_password full authentication: the client sends its password in clear over TLS;
    the server link is plaintext (the fake server has no TLS; the operator chose
    --proxy-backend-ssl=off and trusts the key the server sends), so the proxy does the RSA
    exchange with the server itself. The fake server decrypts with its private key: a password
    that came in clear would fail there. (Without the operator's word the login is refused: see
    test_security.)"""
    from authserver import AuthServer
    import mysql.connector
    server = AuthServer("sha2-full")
    proxy = start_proxy(f"--ssl-cert={CERT}", f"--ssl-key={KEY}", f"--proxy-backend-addresses=127.0.0.1:{server.port}", backend=False,
                        *["--proxy-backend-ssl=off", "--proxy-backend-get-server-public-key"])
    kw = dict(host="127.0.0.1", port=proxy.port, user="u", password=password, auth_plugin="caching_sha2_password",
              ssl_verify_cert=False, ssl_disabled=False, connection_timeout=10)
    if accepted:
        c = mysql.connector.connect(**kw)
        c.ping()
        c.close()
        assert server.steps == ["key requested", "full"]
    else:
        with pytest.raises(mysql.connector.Error) as e:
            mysql.connector.connect(**kw)
        assert e.value.errno == 1045
    # over a plaintext client link the client does the exchange itself, through the proxy
    server2 = AuthServer("sha2-full")
    plain = start_proxy("--skip-ssl", f"--proxy-backend-addresses=127.0.0.1:{server2.port}", backend=False)
    c = pymysql.connect(host="127.0.0.1", port=plain.port, user="u", password="secret", connect_timeout=10)
    c.close()
    assert server2.steps == ["key requested", "full"]


def test_tls_options_in_a_defaults_file(start_proxy, tmp_path):
    cnf = tmp_path / "moonproxy.cnf"
    cnf.write_text(f"[mysql-proxy]\nssl-cert = {CERT}\nssl-key = {KEY}\nproxy-backend-ssl = required\n"
                   "require-secure-transport = true\n")
    cnf.chmod(0o600)
    proxy = start_proxy(f"--defaults-file={cnf}")
    assert cli(proxy.port, SSL_QUERY, extra=[f"--ssl-ca={CA}", "--ssl-verify-server-cert"]).stdout.strip().startswith("TLSv1.")
    assert "3159" in cli(proxy.port, tls=False, check=False).stderr


def test_a_client_that_stalls_in_its_login_is_cut_off(start_proxy):
    """As MariaDB's connect_timeout: a TLS handshake (or handshake response) that never finishes
    holds its connection for --proxy-login-timeout, not for the 8-hour read timeout."""
    proxy = start_proxy("--proxy-login-timeout=1")
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
        data += s.recv(4096)
    ssl_request = struct.pack("<IIB", 0x0200 | CLIENT_SSL | 0x8000 | 0x80000, 1 << 24, 33) + b"\0" * 23
    s.sendall(struct.pack("<I", len(ssl_request))[:3] + b"\x01" + ssl_request + b"\x16\x03\x01")
    started = time.time()
    try:
        while s.recv(4096):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    assert time.time() - started < 6
    assert wait_for_log(proxy, "did not log in within --proxy-login-timeout")
    s.close()
    # a client that logs in is not affected, and stays after the login timeout has passed
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", ssl=no_verify())
    time.sleep(2)
    with c.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    c.close()


def test_sha256_password_over_tls_goes_on_rsa_encrypted(start_proxy):
    """sha256_password after an auth switch: over TLS the client answers with its password in
    clear; the server link is plaintext, so the proxy asks the server for its key and sends the
    password encrypted. Over a plaintext client link the client does that itself."""
    from authserver import AuthServer
    server = AuthServer("sha256")
    proxy = start_proxy(f"--ssl-cert={CERT}", f"--ssl-key={KEY}", f"--proxy-backend-addresses=127.0.0.1:{server.port}",
                        "--proxy-backend-ssl=off", "--proxy-backend-get-server-public-key", backend=False)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="u", password="secret", ssl=no_verify(), connect_timeout=10)
    c.ping(reconnect=False)
    c.close()
    assert server.steps == ["key requested", "sha256"]
    server2 = AuthServer("sha256")
    plain = start_proxy("--skip-ssl", f"--proxy-backend-addresses=127.0.0.1:{server2.port}", backend=False)
    c = pymysql.connect(host="127.0.0.1", port=plain.port, user="u", password="secret", connect_timeout=10)
    c.close()
    assert server2.steps == ["key requested", "sha256"]


def test_a_cleartext_plugin_is_refused_between_tls_and_plaintext(start_proxy):
    """mysql_clear_password has no encrypted form: a client on TLS is not asked for its password
    when the proxy would have to pass it on in clear. Plaintext on both links, it is relayed."""
    from authserver import AuthServer
    server = AuthServer("clear")
    proxy = start_proxy(f"--ssl-cert={CERT}", f"--ssl-key={KEY}", f"--proxy-backend-addresses=127.0.0.1:{server.port}",
                        "--proxy-backend-ssl=off", "--proxy-backend-get-server-public-key", backend=False)
    with pytest.raises(pymysql.err.OperationalError) as e:
        pymysql.connect(host="127.0.0.1", port=proxy.port, user="u", password="secret", ssl=no_verify(), connect_timeout=10)
    assert e.value.args[0] == 1251 and "--proxy-backend-ssl" in e.value.args[1]
    assert server.steps == []
    assert "mysql_clear_password" in proxy.log()
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="u", password="secret", ssl_disabled=True, connect_timeout=10)
    c.close()
    assert server.steps == ["clear"]


def test_a_tls_client_that_vanishes_mid_query_ends_its_query(start_proxy):
    """The server notices a client that disconnects during SLEEP() (it checks every few seconds).
    Through a TLS server link it must see the connection end, as directly, not a close_notify it
    would only read after the query (MariaDB's main.ssl_timeout)."""
    proxy = start_proxy()
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", password="", ssl=no_verify(), read_timeout=1)
    with c.cursor() as cur:
        cur.execute("SHOW STATUS LIKE 'Ssl_version'")
        assert cur.fetchone()[1].startswith("TLSv1.")
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute("SELECT SLEEP(123.5)")
    c.close()
    query = "SELECT COUNT(*) FROM information_schema.processlist WHERE info = 'SELECT SLEEP(123.5)'"
    deadline = time.time() + 15
    with direct() as d, d.cursor() as cur:
        while True:
            cur.execute(query)
            if cur.fetchone()[0] == 0 or time.time() > deadline:
                break
            time.sleep(0.5)
        cur.execute(query)
        assert cur.fetchone()[0] == 0
