"""zstd protocol compression (CLIENT_ZSTD_COMPRESSION_ALGORITHM) and each link negotiating its own
compression. MariaDB speaks only zlib, so zstd is checked with the reference library (libzstd via
ctypes, in rawclient.py) on the client side, and proxy to proxy: a chain where the middle link
speaks zstd while MariaDB sees zlib. The server's own `Compression` status is the oracle for the
server's link."""
import hashlib
import subprocess

import pytest

from conftest import MARIADB_PORT
from rawclient import RawClient

COMPRESSION = "SELECT variable_value FROM information_schema.session_status WHERE variable_name = 'Compression'"

# answers SELECT 'links NAME' with the compression of this proxy's two links
LINKS_SCRIPT = """
function read_query(packet)
    local name = packet:sub(2):match("^SELECT 'links (%w+)'$")
    if name == NAME then
        proxy.response.type = proxy.MYSQLD_PACKET_OK
        proxy.response.resultset = {
            fields = { { name = "client", type = proxy.MYSQL_TYPE_STRING }, { name = "server", type = proxy.MYSQL_TYPE_STRING } },
            rows = { { proxy.connection.client.compression or "none", proxy.connection.server.compression or "none" } } }
        return proxy.PROXY_SEND_RESULT
    end
end
"""


def links_script(tmp_path, name):
    path = tmp_path / f"links-{name}.lua"
    path.write_text(f'local NAME = "{name}"\n' + LINKS_SCRIPT)
    return f"--proxy-lua-script={path}"


def cli(port, sql, extra=()):
    r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "--batch", "--skip-column-names", "--skip-ssl"]
                       + list(extra) + ["-e", sql], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def test_a_zstd_client_and_a_zlib_server(start_proxy, tmp_path):
    proxy = start_proxy(links_script(tmp_path, "p"))
    c = RawClient("127.0.0.1", proxy.port, compression=("zstd", 7))
    assert c.compression == ("zstd", 7)
    assert c.query_rows("SELECT 'links p'") == [[b"zstd", b"zlib"]]
    assert c.query_rows(COMPRESSION) == [[b"ON"]]
    # a result of several zstd frames, checked against the server's own digest
    rows = c.query_rows("SELECT REPEAT(CONCAT('ab', seq), 4000), MD5(REPEAT(CONCAT('ab', seq), 4000)) FROM mysql.seq_1_to_300")
    assert len(rows) == 300 and all(hashlib.md5(v).hexdigest().encode() == d for v, d in rows)
    # a command of 20 MB: several frames towards the proxy, one MySQL packet spread over two
    big = "xyz" * 7_000_000
    assert c.query_rows(f"SELECT LENGTH('{big}'), MD5('{big}')") == [[b"21000000", hashlib.md5(big.encode()).hexdigest().encode()]]
    c.close()


def test_a_client_the_server_cannot_match(start_proxy, tmp_path):
    # zstd without any compression towards the server, and zlib's client with compression off
    # towards the server: each link has what was asked of it
    proxy = start_proxy(links_script(tmp_path, "p"), "--proxy-backend-compression=off")
    c = RawClient("127.0.0.1", proxy.port, compression=("zstd", 3))
    assert c.query_rows("SELECT 'links p'") == [[b"zstd", b"none"]]
    assert c.query_rows(COMPRESSION) == [[b"OFF"]]
    c.close()
    assert cli(proxy.port, COMPRESSION, ["--compress"]).strip() == "OFF"
    # and the other way round: a plaintext client, a compressed server link
    proxy2 = start_proxy(links_script(tmp_path, "q"), "--proxy-backend-compression=zlib")
    assert cli(proxy2.port, "SELECT 'links q'; " + COMPRESSION).split() == ["none", "zlib", "ON"]


def test_offering_no_compression(start_proxy):
    proxy = start_proxy("--protocol-compression-algorithms=uncompressed")
    c = RawClient("127.0.0.1", proxy.port, compression=("zstd", 3))
    assert c.compression is None and c.query_rows(COMPRESSION) == [[b"OFF"]]
    c.close()
    # libmariadb asks for compression only when offered: it goes on without
    assert cli(proxy.port, COMPRESSION, ["--compress"]).strip() == "OFF"


def test_a_chain_of_proxies_speaking_zstd(start_proxy, tmp_path):
    """client --plain--> A --zstd:9--> B --zlib (mirror: MariaDB has no zstd)--> MariaDB"""
    b = start_proxy(links_script(tmp_path, "b"))
    a = start_proxy(links_script(tmp_path, "a"), "--proxy-backend-compression=zstd:9", f"--proxy-backend-addresses=127.0.0.1:{b.port}",
                    backend=False)
    out = cli(a.port, "SELECT 'links a'; SELECT 'links b'; " + COMPRESSION).split()
    assert out == ["none", "zstd", "zstd", "zlib", "ON"]
    # 50 MB through both compressed links, against the same query run directly
    sql = "SELECT seq, REPEAT(MD5(seq), 32) FROM mysql.seq_1_to_50000"
    through = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{a.port}", "-uroot", "--batch", "--quick", "--skip-ssl", "-e", sql],
                             capture_output=True, timeout=180)
    straight = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{MARIADB_PORT}", "-uroot", "--batch", "--quick", "--skip-ssl", "-e", sql],
                              capture_output=True, timeout=180)
    assert through.returncode == 0 and len(through.stdout) > 50_000_000
    assert hashlib.sha256(through.stdout).digest() == hashlib.sha256(straight.stdout).digest()
    # a zlib client at the front: A's links are zlib and zstd, B's zstd and zlib
    import mysql.connector
    c = mysql.connector.connect(host="127.0.0.1", port=a.port, user="root", compress=True, ssl_disabled=True)
    cur = c.cursor()
    cur.execute("SELECT 'links a'")
    assert cur.fetchone() == ("zlib", "zstd")
    big = "q" * 20_000_000
    cur.execute("SELECT LENGTH(%s), MD5(%s)", (big, big))
    assert cur.fetchone() == (20_000_000, hashlib.md5(big.encode()).hexdigest())
    c.close()


def test_garbage_in_a_zstd_frame_ends_only_that_connection(start_proxy):
    proxy = start_proxy()
    c = RawClient("127.0.0.1", proxy.port, compression=("zstd", 3))
    # a frame that says it holds 1000 bytes of zstd and carries noise
    c.sock.sendall(bytes([100, 0, 0, 0, 0xE8, 0x03, 0]) + bytes(range(100)))
    with pytest.raises((ConnectionError, OSError)):
        c.query_rows("SELECT 1")
    other = RawClient("127.0.0.1", proxy.port, compression=("zstd", 3))
    assert other.query_rows("SELECT 1") == [[b"1"]]
    other.close()
    assert "zstd" in proxy.log()
