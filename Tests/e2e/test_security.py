"""Secure defaults (issue 22): each point of the security review, tried end to end against the
release behaviour it describes. The attackers are a man in the middle on the server link (a
Python relay that strips CLIENT_SSL from MariaDB's greeting, a fake server that asks for the
password), greedy and slow HTTP clients, a flood of clients at the descriptor limit (prlimit), a
database client that names files in PROXY SAVE/LOAD CONFIG, a rogue server that asks for a local
file, and a script reaching for binary chunks and C libraries."""
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from pathlib import Path

import pymysql
import pytest

from authserver import AuthServer
from conftest import BINARY, MARIADB_PORT, free_port, wait_for_port
from fakeserver import GREETING, OK, FakeServer, frame, read_packet
from test_scripting import script

CERTS = Path(os.environ.get("MOON_TEST_CERTS", ""))
CA, CERT, KEY = str(CERTS / "ca.pem"), str(CERTS / "server.pem"), str(CERTS / "server-key.pem")
CLIENT_CERT, CLIENT_KEY = str(CERTS / "client.pem"), str(CERTS / "client-key.pem")
CLIENT_SSL = 0x800


def no_verify():
    return {"check_hostname": False, "verify_mode": ssl.CERT_NONE}


def wait_for_log(proxy, text, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if re.search(text, proxy.log()):
            return True
        time.sleep(0.05)
    return False


def listening_addresses(port):
    """The local addresses something listens on at `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                if len(address) == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    words = [bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, 32, 8)]
                    found.append(socket.inet_ntop(socket.AF_INET6, b"".join(words)))
    return found


def secret_file(tmp_path, name, text, mode=0o600):
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# MARK: 1. backend trust


class StrippingRelay:
    """A man in the middle on the server link: relays to MariaDB, clearing CLIENT_SSL in the
    server's greeting so that the proxy would have to fall back to plaintext. Counts the bytes the
    proxy sends after the greeting (a login would be among them)."""

    def __init__(self, port):
        self.target = port
        self.from_proxy = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                proxy_side, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(proxy_side,), daemon=True).start()

    def _serve(self, proxy_side):
        server = socket.create_connection(("127.0.0.1", self.target))
        try:
            seq, greeting = read_packet(server)
            pos = greeting.index(b"\0", 1) + 1 + 4 + 9
            caps = struct.unpack_from("<H", greeting, pos)[0] & ~CLIENT_SSL
            greeting = greeting[:pos] + struct.pack("<H", caps) + greeting[pos + 2:]
            proxy_side.sendall(frame(greeting, seq))
            sockets = [proxy_side, server]
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is proxy_side:
                        self.from_proxy += len(data)
                        server.sendall(data)
                    else:
                        proxy_side.sendall(data)
        except OSError:
            pass
        finally:
            proxy_side.close()
            server.close()


def test_a_tls_client_is_not_carried_over_a_link_stripped_of_tls(start_proxy):
    """The relay clears CLIENT_SSL: the proxy (which offers TLS to clients with --ssl-cert) used to
    fall back to plaintext without a word and send the TLS client's login through the relay."""
    relay = StrippingRelay(MARIADB_PORT)
    proxy = start_proxy(f"--ssl-cert={CERT}", f"--ssl-key={KEY}", f"--proxy-backend-addresses=127.0.0.1:{relay.port}", backend=False)
    assert wait_for_log(proxy, "backends are reached without verifying who answers")
    with pytest.raises(pymysql.err.OperationalError) as e:
        pymysql.connect(host="127.0.0.1", port=proxy.port, user="nat", password="natpass", ssl=no_verify(), connect_timeout=10)
    assert "does not carry a TLS client over a plaintext server link" in e.value.args[1]
    assert wait_for_log(proxy, "the backend server does not offer TLS")
    assert relay.from_proxy == 0  # nothing of the client's login reached the relay
    # a plaintext client is carried as it would be directly: its own choice
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="nat", password="natpass", connect_timeout=10, ssl_disabled=True)
    c.close()
    assert relay.from_proxy > 0


def sha2_login(port, password="secret"):
    import mysql.connector
    return mysql.connector.connect(host="127.0.0.1", port=port, user="u", password=password, auth_plugin="caching_sha2_password",
                                   ssl_verify_cert=False, ssl_disabled=False, connection_timeout=10)


def test_a_password_reaches_an_unverified_server_only_as_the_operator_allows(start_proxy, tmp_path):
    """caching_sha2_password's full authentication from a TLS client, to a server on a link that is
    not verified TLS (the fake server plays the man in the middle, with a key of its own). The
    proxy used to ask it for its key and send the password encrypted to it, where it was read."""
    import mysql.connector
    base = [f"--ssl-cert={CERT}", f"--ssl-key={KEY}", "--proxy-backend-ssl=off"]
    server = AuthServer("sha2-full")
    refused = start_proxy(*base, f"--proxy-backend-addresses=127.0.0.1:{server.port}", backend=False)
    with pytest.raises(mysql.connector.Error) as e:
        sha2_login(refused.port)
    assert e.value.errno == 1251 and "Authentication requires secure connection" in e.value.msg
    assert server.steps == []  # neither a key request nor the password
    assert wait_for_log(refused, "login refused")

    # the operator pinned the server's key: the password goes encrypted with it, no key is asked
    pinned = secret_file(tmp_path, "server-key.pem", server.pem.decode(), 0o644)
    with_key = start_proxy(*base, f"--proxy-backend-addresses=127.0.0.1:{server.port}", f"--proxy-backend-server-public-key={pinned}",
                           backend=False)
    sha2_login(with_key.port).close()
    assert server.steps == ["full"]
    # a server (or a man in the middle) without that key's private half cannot read it
    impostor = AuthServer("sha2-full", key_bits=3072)
    fooled = start_proxy(*base, f"--proxy-backend-addresses=127.0.0.1:{impostor.port}", f"--proxy-backend-server-public-key={pinned}",
                         backend=False)
    with pytest.raises(mysql.connector.Error) as e:
        sha2_login(fooled.port)
    assert e.value.errno == 1045 and impostor.steps == ["not encrypted for this key", "full"]

    # the operator trusts the key the server sends (MySQL's --get-server-public-key), but not a weak one
    weak = AuthServer("sha2-full", key_bits=1024)
    trusting = start_proxy(*base, "--proxy-backend-get-server-public-key", f"--proxy-backend-addresses=127.0.0.1:{weak.port}", backend=False)
    with pytest.raises(mysql.connector.Error) as e:
        sha2_login(trusting.port)
    assert "1024 bits" in e.value.msg and "2048" in e.value.msg
    assert weak.steps == ["key requested"]
    # an unreadable or short pinned key stops the proxy at startup
    short = secret_file(tmp_path, "short.pem", weak.pem.decode(), 0o644)
    r = subprocess.run([BINARY, f"--proxy-address=127.0.0.1:{free_port()}", f"--proxy-backend-server-public-key={short}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "2048" in r.stderr


# MARK: 2. the admin interface


def test_admin_is_on_loopback_with_tls_and_slows_down_password_guessing(start_proxy, tmp_path):
    admin_port = free_port()
    password = secret_file(tmp_path, "admin-password", "s3cret pass")
    proxy = start_proxy("--plugins=proxy,admin", f"--admin-address=:{admin_port}", "--admin-username=boss",
                        f"--admin-password-file={password}")
    wait_for_port(admin_port)
    assert listening_addresses(admin_port) == ["127.0.0.1"]
    # TLS with the proxy's certificate (self-signed here)
    a = pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="s3cret pass", ssl=no_verify())
    assert isinstance(a._sock, ssl.SSLSocket)
    with a.cursor() as cur:
        cur.execute("SELECT * FROM backends")
        assert cur.fetchall()
    a.close()

    # failed logins from one address: after three, each new connection waits longer for its greeting
    for _ in range(4):
        with pytest.raises(pymysql.err.OperationalError) as e:
            pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="guess", connect_timeout=10)
        assert e.value.args[0] == 1045
    started = time.time()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="guess", connect_timeout=10)
    assert time.time() - started >= 0.9
    started = time.time()
    pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="s3cret pass", connect_timeout=10).close()
    assert time.time() - started >= 1.9  # still slowed: 5 failures
    started = time.time()
    pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="s3cret pass", connect_timeout=10).close()
    assert time.time() - started < 0.9  # a login that worked clears the address

    # --require-secure-transport holds for the admin interface too
    strict_port = free_port()
    start_proxy("--plugins=proxy,admin", f"--admin-address=127.0.0.1:{strict_port}", "--admin-username=boss",
                f"--admin-password-file={password}", "--require-secure-transport")
    wait_for_port(strict_port)
    with pytest.raises(pymysql.err.OperationalError) as e:
        pymysql.connect(host="127.0.0.1", port=strict_port, user="boss", password="s3cret pass", connect_timeout=10, ssl_disabled=True)
    assert e.value.args[0] == 3159
    pymysql.connect(host="127.0.0.1", port=strict_port, user="boss", password="s3cret pass", ssl=no_verify()).close()


# MARK: 3. the metrics endpoint


def test_the_query_log_keeps_no_password(start_proxy, tmp_path):
    verbatim, normalized = tmp_path / "verbatim.log", tmp_path / "normalized.log"
    for log, extra in ((verbatim, []), (normalized, ["--query-log-normalize"])):
        proxy = start_proxy(f"--query-log={log}", *extra)
        c = proxy.connect()
        with c.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS 'sec'@'%' IDENTIFIED BY 'Sup3rSecret1'")
            cur.execute("ALTER USER 'sec'@'%' IDENTIFIED BY 'Sup3rSecret2'")
            cur.execute("SET PASSWORD FOR 'sec'@'%' = PASSWORD('Sup3rSecret3')")
            cur.execute("GRANT SELECT ON moon.* TO 'sec'@'%' IDENTIFIED BY 'Sup3rSecret4'")
            cur.execute("ALTER USER 'sec'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('Sup3rSecret5')")
            cur.execute("/*!50000 ALTER USER 'sec'@'%' IDENTIFIED BY 'Sup3rSecret6' */")
            cur.execute("SELECT /*!50000 'ExecComment7', */ 1, 0x5365637265743838, X'53656372657439'")
            cur.execute("DROP USER 'sec'@'%'")
        c.close()
        proxy.stop()
    for log in (verbatim, normalized):
        text = log.read_text()
        assert text.count("\n") >= 8
        assert "Sup3rSecret" not in text, text
    assert "<secret>" in verbatim.read_text()
    n = normalized.read_text()
    assert "ExecComment7" not in n and "5365637265743838" not in n and "53656372657439" not in n


# MARK: 6. PROXY SAVE/LOAD CONFIG


AUTO_CONFIG_SCRIPT = """
    local commands = require("proxy.commands")
    require("proxy.auto-config")
    proxy.global.config.demo = proxy.global.config.demo or { level = 1 }
    function read_query(packet)
      return proxy.global.config:handle(commands.parse(packet))
    end
"""


def test_clients_cannot_name_files_for_proxy_save_and_load_config(start_proxy, tmp_path):
    outside = tmp_path / "outside.lua"
    p = script(AUTO_CONFIG_SCRIPT)
    off = start_proxy(f"--proxy-lua-script={p}")
    c = off.connect()
    with c.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as e:
            cur.execute(f'PROXY SAVE CONFIG INTO "{outside}"')
        assert "--proxy-auto-config-dir" in e.value.args[1]
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute('PROXY LOAD CONFIG FROM "/etc/passwd"')
    c.close()
    assert not outside.exists()

    directory = tmp_path / "autoconfig"
    directory.mkdir()
    target = tmp_path / "target.txt"
    target.write_text("untouched\n")
    (directory / "link.lua").symlink_to(target)
    on = start_proxy(f"--proxy-lua-script={p}", f"--proxy-auto-config-dir={directory}")
    c = on.connect()
    with c.cursor() as cur:
        for name in ["../outside.lua", str(outside), ".hidden", "link.lua"]:
            with pytest.raises(pymysql.err.OperationalError):
                cur.execute(f'PROXY SAVE CONFIG INTO "{name}"')
            with pytest.raises(pymysql.err.OperationalError):
                cur.execute(f'PROXY LOAD CONFIG FROM "{name}"')
        cur.execute('PROXY SAVE CONFIG INTO "kept.lua"')
        cur.execute('PROXY LOAD CONFIG FROM "kept.lua"')
    c.close()
    assert not outside.exists() and target.read_text() == "untouched\n"
    assert "level" in (directory / "kept.lua").read_text()


# MARK: 7. the smaller points


def test_secrets_stay_off_the_command_line_and_out_of_loose_files(start_proxy, tmp_path):
    admin_port = free_port()
    proxy = start_proxy("--plugins=proxy,admin", f"--admin-address=127.0.0.1:{admin_port}", "--admin-username=boss",
                        "--admin-password=VisibleInPs9")
    wait_for_port(admin_port)
    assert b"VisibleInPs9" not in Path(f"/proc/{proxy.proc.pid}/cmdline").read_bytes()
    assert wait_for_log(proxy, "password was given on the command line")
    pymysql.connect(host="127.0.0.1", port=admin_port, user="boss", password="VisibleInPs9").close()
    # from the environment
    env_port = free_port()
    env = dict(os.environ, MOONPROXY_ADMIN_PASSWORD="FromTheEnvironment")
    start_proxy("--plugins=proxy,admin", f"--admin-address=127.0.0.1:{env_port}", "--admin-username=boss", env=env)
    wait_for_port(env_port)
    pymysql.connect(host="127.0.0.1", port=env_port, user="boss", password="FromTheEnvironment").close()
    # files that others may read are refused: a password file, the defaults file
    loose = secret_file(tmp_path, "loose-password", "x", 0o644)
    r = subprocess.run([BINARY, "--plugins=admin", "--admin-username=boss", f"--admin-password-file={loose}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "0644" in r.stderr
    cnf = secret_file(tmp_path, "loose.cnf", "[mysql-proxy]\nadmin-password = x", 0o644)
    r = subprocess.run([BINARY, f"--defaults-file={cnf}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "should be 0660 or stricter" in r.stderr


def test_the_pid_file_is_written_safely_and_locked(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    link = tmp_path / "link.pid"
    link.symlink_to(target)
    r = subprocess.run([BINARY, f"--proxy-address=127.0.0.1:{free_port()}", f"--pid-file={link}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "symbolic link" in r.stderr
    assert target.read_text() == "keep me\n"

    pid_file = tmp_path / "moonproxy.pid"
    port = free_port()
    first = subprocess.Popen([BINARY, f"--proxy-address=127.0.0.1:{port}", f"--pid-file={pid_file}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=first)
        assert pid_file.read_text().strip() == str(first.pid)
        second = subprocess.run([BINARY, f"--proxy-address=127.0.0.1:{free_port()}", f"--pid-file={pid_file}"],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and f"held by another running moonproxy (pid {first.pid})" in second.stderr
        assert pid_file.read_text().strip() == str(first.pid)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(20)
    assert not pid_file.exists()


class FileGrabbingServer(FakeServer):
    """A rogue server: answers every query with a LOCAL INFILE request for a file of its choice,
    and records what the client sends back."""

    def __init__(self, wanted):
        self.wanted = wanted
        self.received = b""
        super().__init__()

    def _serve(self, conn):
        try:
            conn.sendall(frame(GREETING, 0))
            seq, _ = read_packet(conn)
            conn.sendall(frame(OK, seq + 1))
            while True:
                seq, payload = read_packet(conn)
                if payload is None or payload[:1] == b"\x01":
                    return
                conn.sendall(frame(b"\xfb" + self.wanted.encode(), 1))
                while True:
                    seq, data = read_packet(conn)
                    if data is None:
                        return
                    self.received += data
                    if not data:
                        break
                conn.sendall(frame(OK, seq + 1))
        except OSError:
            pass
        finally:
            conn.close()


def test_a_server_cannot_ask_for_a_local_file_a_statement_did_not_name(start_proxy, tmp_path):
    private = tmp_path / "private.txt"
    private.write_text("the client's secret file\n")
    rogue = FileGrabbingServer(str(private))
    proxy = start_proxy(f"--proxy-backend-addresses=127.0.0.1:{rogue.port}", backend=False)
    with pytest.raises(pymysql.err.MySQLError) as e:
        c = proxy.connect(local_infile=True, autocommit=None)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
    assert e.value.args[0] == 1148
    assert rogue.received == b""
    assert wait_for_log(proxy, "LOCAL INFILE")
    # a statement that loads a local file still may, through the real server
    data = tmp_path / "rows.txt"
    data.write_text("1,one\n2,two\n")
    good = start_proxy()
    c = good.connect(local_infile=True, database="moon")
    with c.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE li (id INT, name VARCHAR(10))")
        cur.execute(f"/* a hint */ LOAD DATA LOCAL INFILE '{data}' INTO TABLE li FIELDS TERMINATED BY ','")
        cur.execute("SELECT COUNT(*) FROM li")
        assert cur.fetchone() == (2,)
    c.close()


def openssl(*args, input=b""):
    return subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=30)


def test_client_tls_defaults_and_client_certificates(start_proxy, tmp_path):
    proxy = start_proxy()  # the self-signed certificate
    r = openssl("s_client", "-connect", f"127.0.0.1:{proxy.port}", "-starttls", "mysql", "-showcerts")
    assert r.returncode == 0, r.stderr
    pem = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout, re.S).group(0)
    dates = openssl("x509", "-noout", "-startdate", "-enddate", "-dateopt", "iso_8601", input=pem).stdout.decode()
    import datetime
    start = datetime.datetime.fromisoformat(re.search(r"notBefore=(\S+ \S+)", dates).group(1).replace("Z", "+00:00"))
    end = datetime.datetime.fromisoformat(re.search(r"notAfter=(\S+ \S+)", dates).group(1).replace("Z", "+00:00"))
    assert end - start <= datetime.timedelta(days=366)
    # TLS 1.2 offers no CBC or SHA-1 suites by default
    cbc = openssl("s_client", "-connect", f"127.0.0.1:{proxy.port}", "-starttls", "mysql", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
    assert cbc.returncode != 0
    gcm = openssl("s_client", "-connect", f"127.0.0.1:{proxy.port}", "-starttls", "mysql", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert gcm.returncode == 0, gcm.stderr

    # --require-x509: a TLS client without a certificate that verifies is refused
    strict = start_proxy(f"--ssl-cert={CERT}", f"--ssl-key={KEY}", f"--ssl-ca={CA}", "--require-x509")
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host="127.0.0.1", port=strict.port, user="root", password="", ssl=no_verify(), connect_timeout=10)
    c = pymysql.connect(host="127.0.0.1", port=strict.port, user="root", password="", connect_timeout=10,
                        ssl={**no_verify(), "cert": CLIENT_CERT, "key": CLIENT_KEY})
    c.close()
    other = pymysql.connect  # a certificate from another CA is refused as well
    with pytest.raises(pymysql.err.OperationalError):
        other(host="127.0.0.1", port=strict.port, user="root", password="", connect_timeout=10,
              ssl={**no_verify(), "cert": str(CERTS / "other-client.pem"), "key": str(CERTS / "other-client-key.pem")})


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_no_connection_is_served_before_privileges_are_dropped(tmp_path):
    """With --user, the listener is bound as root and accepts only once the process runs as the
    user: clients that connect the moment the port opens are served by the unprivileged process."""
    p = script("""
        function read_query(packet)
          if not packet:find("moon_uid", 1, true) then return end
          local status = io.open("/proc/self/status"):read("a")
          proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
            fields = { { name = "uid", type = proxy.MYSQL_TYPE_STRING } }, rows = { { status:match("Uid:%s+(%d+)") } } } }
          return proxy.PROXY_SEND_RESULT
        end
    """)
    os.chmod(p, 0o644)
    port = free_port()
    proc = subprocess.Popen([BINARY, f"--proxy-address=127.0.0.1:{port}", f"--proxy-backend-addresses=127.0.0.1:{MARIADB_PORT}",
                             f"--proxy-lua-script={p}", "--user=nobody"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nobody = str(int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout))
    try:
        seen = []
        deadline = time.time() + 15
        while len(seen) < 5 and time.time() < deadline:
            try:
                c = pymysql.connect(host="127.0.0.1", port=port, user="root", password="", connect_timeout=5)
            except (pymysql.err.OperationalError, ConnectionRefusedError):
                time.sleep(0.01)
                continue
            with c.cursor() as cur:
                cur.execute("SELECT 'moon_uid'")
                seen.append(cur.fetchone()[0])
            c.close()
        assert seen and set(seen) == {nobody}, seen
    finally:
        proc.kill()
        proc.wait()


# MARK: 8. Lua


def test_scripts_reach_neither_binary_chunks_nor_c_libraries(start_proxy, tmp_path):
    probes = script("""
        local function probe()
          local results = {}
          local function add(name, value) results[#results + 1] = { name, tostring(value) } end
          add("getupvalue(load)", select("#", debug.getupvalue(load, 1)))
          add("loadlib", type(package.loadlib))
          add("c searchers", #package.searchers)
          add("binary load", (load(string.dump(function() return 1 end))))
          local out = io.open(os.getenv("MOON_PROBE_DIR") .. "/bin.lua", "wb")
          out:write(string.dump(function() return "ran" end)); out:close()
          package.path = os.getenv("MOON_PROBE_DIR") .. "/?.lua"
          add("binary require", (pcall(require, "bin")))
          return results
        end
        function read_query(packet)
          if not packet:find("moon_probe", 1, true) then return end
          local rows = probe()
          proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
            fields = { { name = "probe", type = proxy.MYSQL_TYPE_STRING }, { name = "result", type = proxy.MYSQL_TYPE_STRING } },
            rows = rows } }
          return proxy.PROXY_SEND_RESULT
        end
    """)
    env = dict(os.environ, MOON_PROBE_DIR=str(tmp_path))
    proxy = start_proxy(f"--proxy-lua-script={probes}", env=env)
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT 'moon_probe'")
        results = dict(cur.fetchall())
    c.close()
    assert results == {"getupvalue(load)": "0", "loadlib": "nil", "c searchers": "2", "binary load": "nil", "binary require": "false"}
    # the operator may give scripts C modules
    cpath = start_proxy(f"--proxy-lua-script={probes}", f"--lua-cpath={tmp_path}/?.so", env=env)
    c = cpath.connect()
    with c.cursor() as cur:
        cur.execute("SELECT 'moon_probe'")
        results = dict(cur.fetchall())
    c.close()
    assert results["loadlib"] == "function" and results["c searchers"] == "4" and results["binary load"] == "nil"
