"""Clients must not be able to tell MoonProxy from the server: results, errors, warnings,
authentication and session behaviour, through the mariadb CLI, PyMySQL and a raw client."""
import hashlib
import struct
import threading
import time

import pymysql
import pytest

from conftest import MARIADB_PORT, MARIADB_SOCKET, mariadb_cli
from rawclient import CLIENT_DEPRECATE_EOF, DEFAULT_CAPS, RawClient, native_password

QUERIES = [
    "SELECT 1",
    "SELECT * FROM moon.t ORDER BY id",
    "SELECT 1/0; SHOW WARNINGS",
    "SHOW VARIABLES LIKE 'max_allowed_packet'",
    "CALL moon.two_results()",
    "SELECT 'a' AS x UNION SELECT 'b' ORDER BY x",
    "SELECT NULL, 1.5, -3, 'é', X'00ff', CAST('2024-01-02 03:04:05.678' AS DATETIME(3))",
    "DO 1; SELECT 2; SELECT 3",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_cli_output_matches_direct(proxy, sql):
    via_proxy = mariadb_cli(proxy.port, sql, check=False)
    straight = mariadb_cli(MARIADB_PORT, sql, check=False)
    assert (via_proxy.returncode, via_proxy.stdout, via_proxy.stderr) == \
        (straight.returncode, straight.stdout, straight.stderr)


def test_errors_keep_code_and_sqlstate(proxy):
    r = mariadb_cli(proxy.port, "SELECT * FROM moon.nosuch", check=False)
    assert r.returncode == 1
    assert "ERROR 1146 (42S02)" in r.stderr
    c = proxy.connect()
    with c.cursor() as cur:
        with pytest.raises(pymysql.err.ProgrammingError) as e:
            cur.execute("SELEC 1")
        assert e.value.args[0] == 1064
        cur.execute("SELECT 1")  # the connection is still good
        assert cur.fetchone() == (1,)


def test_native_password_user(proxy):
    r = mariadb_cli(proxy.port, "SELECT current_user()", user="nat", password="natpass")
    assert "nat@%" in r.stdout


def test_ed25519_user(proxy):
    r = mariadb_cli(proxy.port, "SELECT current_user()", user="ed", password="edpass")
    assert "ed@%" in r.stdout


@pytest.mark.parametrize("user", ["nat", "ed"])
def test_wrong_password_gets_the_servers_error(proxy, user):
    via_proxy = mariadb_cli(proxy.port, "SELECT 1", user=user, password="wrong", check=False)
    straight = mariadb_cli(MARIADB_PORT, "SELECT 1", user=user, password="wrong", check=False)
    assert via_proxy.returncode == 1
    assert "ERROR 1045 (28000)" in via_proxy.stderr
    assert via_proxy.stderr == straight.stderr


def test_pymysql_round_trips_and_transactions(proxy):
    c = proxy.connect(database="moon", autocommit=False)
    with c.cursor() as cur:
        cur.execute("DELETE FROM t WHERE id >= 1000")
        cur.executemany("INSERT INTO t (id, name) VALUES (%s, %s)", [(1000 + i, f"n{i}") for i in range(50)])
        cur.execute("SELECT COUNT(*) FROM t WHERE id >= 1000")
        assert cur.fetchone() == (50,)
        c.rollback()
        cur.execute("SELECT COUNT(*) FROM t WHERE id >= 1000")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT @@in_transaction")
    c.close()


def test_multi_statements_with_pymysql(proxy):
    c = proxy.connect(client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    with c.cursor() as cur:
        cur.execute("SELECT 1 AS a; SELECT 2 AS b, 3 AS c; DO 4")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.fetchall() == ((2, 3),)
        assert cur.nextset()
        assert not cur.nextset()
        cur.execute("SELECT 5")
        assert cur.fetchone() == (5,)


def test_stored_procedure_with_several_results(proxy):
    c = proxy.connect(database="moon")
    with c.cursor() as cur:
        cur.callproc("two_results")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.fetchall() == ((2, "two"),)
        while cur.nextset():
            pass
        cur.execute("SELECT 6")
        assert cur.fetchone() == (6,)


def test_blob_of_20_mib_round_trip(proxy):
    blob = bytes(range(256)) * (20 * 1024 * 1024 // 256) + b"tail"
    c = proxy.connect(database="moon", max_allowed_packet=64 * 1024 * 1024)
    with c.cursor() as cur:
        cur.execute("REPLACE INTO t (id, name, b) VALUES (42, 'blob', %s)", (blob,))
        c.commit()
        cur.execute("SELECT b, MD5(b) FROM t WHERE id = 42")
        got, md5 = cur.fetchone()
    assert len(got) == len(blob)
    assert got == blob
    assert md5 == hashlib.md5(blob).hexdigest()


def test_packet_of_exactly_16_mib_minus_one(proxy):
    """A payload of 0xFFFFFF bytes needs an empty trailing frame in both directions."""
    c = proxy.connect(database="moon", max_allowed_packet=64 * 1024 * 1024)
    with c.cursor() as cur:
        # COM_QUERY payload = 1 command byte + SQL; make the whole payload exactly 0xFFFFFF.
        prefix = "SELECT LENGTH('"
        suffix = "')"
        filler = 0xFFFFFF - 1 - len(prefix) - len(suffix)
        cur.execute(prefix + "x" * filler + suffix)
        assert cur.fetchone() == (filler,)
        # A row whose payload is exactly 0xFFFFFF: one column, lenenc prefix of 4 bytes.
        n = 0xFFFFFF - 4
        cur.execute(f"SELECT REPEAT('y', {n})")
        assert len(cur.fetchone()[0]) == n


def test_load_data_local_infile(proxy, tmp_path):
    data = tmp_path / "rows.tsv"
    data.write_text("".join(f"{2000 + i}\tr{i}\n" for i in range(1000)))
    c = proxy.connect(database="moon", local_infile=True)
    with c.cursor() as cur:
        cur.execute("DELETE FROM t WHERE id >= 2000")
        cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE t (id, name)")
        cur.execute("SELECT COUNT(*) FROM t WHERE id >= 2000")
        assert cur.fetchone() == (1000,)
        cur.execute("DELETE FROM t WHERE id >= 2000")
    c.commit()


def test_change_user(proxy):
    """COM_CHANGE_USER with an auth switch. mysqltest's change_user covers libmariadb (see
    Tests/mysqltest); PyMySQL has no change_user, so this uses the raw client."""
    rc = RawClient("127.0.0.1", proxy.port)
    body = b"nat\0" + bytes([0]) + b"moon\0" + struct.pack("<H", 33) + b"mysql_native_password\0"
    rc.command(0x11, body)
    reply = rc.read_packet()
    assert reply[0] == 0xFE  # auth switch with a fresh scramble
    name_end = reply.index(b"\0", 1)
    rc.write_packet(native_password(b"natpass", reply[name_end + 1:].rstrip(b"\0")))
    ok = rc.read_packet()
    assert ok[0] == 0x00
    rc.command(0x03, b"SELECT current_user()")
    packets = rc.read_all()
    assert any(b"nat@%" in p for p in packets)
    rc.close()


@pytest.mark.parametrize("caps", [DEFAULT_CAPS, DEFAULT_CAPS | CLIENT_DEPRECATE_EOF], ids=["eof", "deprecate-eof"])
def test_raw_client_sees_the_same_packets(proxy, caps):
    """Byte-for-byte the same responses, with and without CLIENT_DEPRECATE_EOF."""
    script = [
        (0x03, b"SELECT id, name FROM moon.t WHERE id < 100 ORDER BY id"),
        (0x03, b"SELECT 1; SELECT 2"),
        (0x16, b"SELECT ? + 1"),
        (0x03, b"SET @x = 1"),
        (0x0E, b""),
        (0x09, None),
        (0x04, b"t\0"),
    ]
    outputs = []
    for port in (MARIADB_PORT, proxy.port):
        rc = RawClient("127.0.0.1", port, database="moon", caps=caps)
        got = []
        for code, body in script:
            rc.command(code, body or b"")
            packets = rc.read_all(quiet=0.2)
            if code == 0x09:
                packets = [b"<statistics>"]  # uptime and counters differ between the two
            if code == 0x16 and packets and packets[0][:1] == b"\x00":
                packets[0] = packets[0][:1] + b"<id>" + packets[0][5:]  # statement ids are server-wide
            got.append(packets)
        rc.close()
        outputs.append(got)
    assert outputs[0] == outputs[1]


def test_greeting_capabilities_are_the_servers(proxy):
    """Compression and TLS are offered as the server offers them; zstd, which the proxy speaks
    to clients on its own (--protocol-compression-algorithms), is offered as well."""
    direct_client = RawClient("127.0.0.1", MARIADB_PORT)
    proxied = RawClient("127.0.0.1", proxy.port)
    compress, ssl, zstd = 1 << 5, 1 << 11, 1 << 26
    assert proxied.server_caps & compress == direct_client.server_caps & compress
    assert proxied.server_caps & ssl == direct_client.server_caps & ssl
    assert proxied.server_caps & zstd and not direct_client.server_caps & zstd
    assert proxied.server_version == direct_client.server_version
    direct_client.close()
    proxied.close()


def test_many_concurrent_clients(proxy):
    errors = []

    def worker(n):
        try:
            c = proxy.connect()
            with c.cursor() as cur:
                for i in range(50):
                    cur.execute("SELECT %s + %s", (n, i))
                    assert cur.fetchone() == (n + i,)
            c.close()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_unix_socket_listener_and_backend(start_proxy, tmp_path):
    sock = tmp_path / "moonproxy.sock"
    start_proxy(f"--proxy-address={sock}", f"--proxy-backend-addresses={MARIADB_SOCKET}", backend=False, wait=False)
    for _ in range(200):
        if sock.exists():
            break
        time.sleep(0.05)
    c = pymysql.connect(unix_socket=str(sock), user="root", password="")
    with c.cursor() as cur:
        cur.execute("SELECT 7")
        assert cur.fetchone() == (7,)
    c.close()
