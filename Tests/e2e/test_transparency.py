"""A client cannot tell the proxy is there: every response shape, with every capability a MariaDB
client asks for, arrives through MoonProxy byte for byte as it arrives directly, and real clients
(MariaDB Connector/Python, the mariadb CLI, mariadb-binlog) behave the same both ways."""
import struct
import subprocess
import time

import pymysql
import pytest

from conftest import MARIADB_PORT, mariadb_cli
import rawclient as rc

MARIADB_CAPS = (rc.MARIADB_CLIENT_PROGRESS | rc.MARIADB_CLIENT_STMT_BULK_OPERATIONS
                | rc.MARIADB_CLIENT_EXTENDED_METADATA | rc.MARIADB_CLIENT_CACHE_METADATA)


def client(port, **kw):
    return rc.RawClient("127.0.0.1", port, database="moon", mariadb_caps=MARIADB_CAPS, **kw)


def query(c, sql, quiet=0.3):
    c.command(0x03, sql.encode())
    return c.read_all(quiet)


def prepare(c, sql):
    """The statement id, and the prepare response with the id zeroed: MariaDB numbers statements
    per server thread, and reuses threads, so ids differ between connections."""
    c.command(0x16, sql.encode())
    packets = c.read_all(0.3)
    sid = struct.unpack_from("<I", packets[0], 1)[0]
    if packets[0][0] == 0:
        packets[0] = packets[0][:1] + b"\0\0\0\0" + packets[0][5:]
    return sid, packets


# Each shape: a conversation whose server packets are compared, direct vs through the proxy.

def bulk_execute(c):
    query(c, "CREATE OR REPLACE TABLE moon.bulk (a INT PRIMARY KEY AUTO_INCREMENT, b VARCHAR(10))")
    out = []
    for sql in ("INSERT INTO moon.bulk (b) VALUES (?)", "INSERT INTO moon.bulk (b) VALUES (?) RETURNING a, b"):
        sid, packets = prepare(c, sql)
        out += packets
        body = struct.pack("<IH", sid, 128) + struct.pack("<H", 253)  # SEND_TYPES_TO_SERVER, VAR_STRING
        for v in (b"x", b"yy", b"zzz"):
            body += b"\x00" + rc.lenenc(len(v)) + v
        c.command(0xFA, body)
        out += c.read_all(0.3)
    return out


def cached_metadata(c):
    query(c, "CREATE OR REPLACE TABLE moon.meta (j JSON, p POINT, u INET6)")
    query(c, "INSERT INTO moon.meta VALUES ('{}', POINT(1,2), '::1')")
    out = query(c, "SELECT * FROM moon.meta")  # extended type info: format=json, geometry, inet6
    sid, packets = prepare(c, "SELECT * FROM moon.meta")
    out += packets
    for _ in range(2):  # the second execute leaves the column definitions out
        c.command(0x17, struct.pack("<IBI", sid, 0, 1))
        out += c.read_all(0.3)
    return out


def out_parameters(c):
    query(c, "CREATE OR REPLACE PROCEDURE moon.outp(IN a INT, OUT b INT, INOUT s VARCHAR(10)) "
             "BEGIN SELECT a; SET b = a * 2; SET s = CONCAT(s, '!'); END")
    sid, out = prepare(c, "CALL moon.outp(?, ?, ?)")
    body = (struct.pack("<IBI", sid, 0, 1) + bytes([0b010]) + b"\x01" + struct.pack("<HHH", 3, 3, 253)
            + struct.pack("<i", 7) + rc.lenenc(2) + b"hi")
    c.command(0x17, body)
    return out + c.read_all(0.5)


def cursor_inside_procedure(c):
    query(c, "CREATE OR REPLACE TABLE moon.cur (a INT)")
    query(c, "INSERT INTO moon.cur VALUES (1), (2), (3)")
    query(c, "CREATE OR REPLACE PROCEDURE moon.curp() BEGIN DECLARE done INT DEFAULT 0; DECLARE v INT; "
             "DECLARE k CURSOR FOR SELECT a FROM moon.cur; DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = 1; "
             "OPEN k; l: LOOP FETCH k INTO v; IF done THEN LEAVE l; END IF; SELECT v; END LOOP; CLOSE k; END")
    out = []
    for flags in (0, 1):  # without and with a cursor asked for
        sid, packets = prepare(c, "CALL moon.curp()")
        c.command(0x17, struct.pack("<IBI", sid, flags, 1))
        out += packets + c.read_all(0.5)
    sid, packets = prepare(c, "SELECT a FROM moon.cur")
    c.command(0x17, struct.pack("<IBI", sid, 1, 1))
    out += packets + c.read_all(0.3)
    for _ in range(2):
        c.command(0x1C, struct.pack("<II", sid, 2))
        out += c.read_all(0.3)
    return out


SHAPES = {"bulk_execute": bulk_execute, "cached_metadata": cached_metadata, "out_parameters": out_parameters,
          "cursor_inside_procedure": cursor_inside_procedure}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_response_shape_is_the_servers_own(proxy, shape):
    direct = client(MARIADB_PORT)
    through = client(proxy.port)
    assert through.caps == direct.caps and through.mariadb_caps == direct.mariadb_caps == MARIADB_CAPS
    expected = SHAPES[shape](direct)
    got = SHAPES[shape](through)
    assert got == expected
    through.command(0x0E)  # still in step
    assert through.read_packet()[0] == 0x00
    assert "cannot follow" not in proxy.log() and "malformed" not in proxy.log()


def test_progress_reports_pass_through(proxy):
    """MariaDB's progress reports (ALTER TABLE with progress_report_time=1) reach a client that
    asked for them, within the command's response, and the connection stays in step."""
    c = client(proxy.port)
    c.sock.settimeout(300)

    def ok(sql):
        c.command(0x03, sql.encode())
        reply = c.read_packet()
        assert reply[0] == 0x00, reply
    ok("CREATE OR REPLACE TABLE moon.big (a INT, b VARCHAR(200)) ENGINE=MyISAM")
    ok("INSERT INTO moon.big SELECT seq, REPEAT('x', 200) FROM seq_1_to_1500000")
    ok("SET progress_report_time=1")
    started = time.time()
    c.command(0x03, b"ALTER TABLE moon.big ENGINE=Aria")
    packets = []
    while True:
        p = c.read_packet()
        packets.append(p)
        if p[:3] != b"\xff\xff\xff":
            break
    assert packets[-1][0] == 0x00, packets[-1]
    if time.time() - started < 1.5 and len(packets) == 1:
        pytest.skip("the ALTER was too quick for a progress report")
    assert len(packets) >= 2, "no progress report arrived"
    ok("DROP TABLE moon.big")
    c.command(0x0E)
    assert c.read_packet()[0] == 0x00


def test_connector_python_executemany_uses_bulk_execute(proxy):
    """MariaDB Connector/Python (on the system's libmariadb) sends executemany as one
    COM_STMT_BULK_EXECUTE when the server offers bulk operations: through the proxy as directly."""
    mariadb = pytest.importorskip("mariadb")

    def executes():
        with pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user="root") as c, c.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Com_stmt_execute'")
            return int(cur.fetchone()[1])

    counts = {}
    for name, port in (("direct", MARIADB_PORT), ("proxy", proxy.port)):
        c = mariadb.connect(host="127.0.0.1", port=port, user="root", database="moon")
        cur = c.cursor()
        cur.execute("CREATE OR REPLACE TABLE moon.many (a INT, b VARCHAR(10))")
        before = executes()
        cur.executemany("INSERT INTO moon.many VALUES (?, ?)", [(i, str(i)) for i in range(500)])
        c.commit()
        counts[name] = executes() - before
        cur.execute("SELECT COUNT(*), SUM(a) FROM moon.many")
        assert cur.fetchone() == (500, sum(range(500)))
        c.close()
    # One execute for all 500 rows: bulk (a client without it would send 500).
    assert counts == {"direct": 1, "proxy": 1}, counts


def test_extended_type_info_reaches_the_cli(proxy):
    """MariaDB's extended type information (format=json, type=uuid) in the column metadata, as
    `mariadb --column-type-info` shows it (main.type_json, main.mysql-metadata)."""
    mariadb_cli(MARIADB_PORT, "CREATE OR REPLACE TABLE moon.ext (j JSON, u UUID); INSERT INTO moon.ext VALUES ('{}', UUID())")
    args = dict(database="moon", extra=["--column-type-info", "--table"])
    direct = mariadb_cli(MARIADB_PORT, "SELECT j, u IS NOT NULL FROM ext", **args).stdout
    through = mariadb_cli(proxy.port, "SELECT j, u IS NOT NULL FROM ext", **args).stdout
    assert "BLOB (format=json)" in direct, direct
    assert through == direct
    direct = mariadb_cli(MARIADB_PORT, "SELECT u FROM ext WHERE FALSE", **args).stdout
    assert "(type=uuid)" in direct, direct
    assert mariadb_cli(proxy.port, "SELECT u FROM ext WHERE FALSE", **args).stdout == direct


def test_command_pipelined_behind_the_login(proxy):
    """A client that sends its first command in the same write as its handshake response gets
    the login's OK, then the command's answer, in order, as it does directly."""
    got = {}
    for name, port in (("direct", MARIADB_PORT), ("proxy", proxy.port)):
        c = rc.RawClient.__new__(rc.RawClient)
        import socket
        c.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.buf = b""
        greeting = c.read_packet()
        pos = greeting.index(b"\0", 1) + 1
        scramble = greeting[pos + 4:pos + 12] + greeting[pos + 31:pos + 43]
        auth = rc.native_password(b"", scramble)
        caps = rc.DEFAULT_CAPS
        body = struct.pack("<IIB", caps, 1 << 24, 33) + b"\0" * 23 + b"root\0" + rc.lenenc(len(auth)) + auth + b"mysql_native_password\0"
        wire = b""
        for payload, seq in ((body, 1), (b"\x03SELECT 'pipelined'", 0)):
            wire += struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload
        c.sock.sendall(wire)
        got[name] = c.read_all(0.5)
    assert got["proxy"] == got["direct"]
    assert got["proxy"][0][0] == 0x00 and any(b"pipelined" in p for p in got["proxy"][1:])


@pytest.mark.skipif(subprocess.run(["mariadb", "-h127.0.0.1", f"-P{MARIADB_PORT}", "-uroot", "-N", "-e",
                                    "SELECT @@log_bin"], capture_output=True, text=True).stdout.strip() != "1",
                    reason="the test server has no binary log")
def test_binlog_read_from_remote_server(proxy):
    """mariadb-binlog --read-from-remote-server sends a non-blocking COM_BINLOG_DUMP: the stream
    ends at the server's EOF, the output is the same as directly, and the proxy logs no loss."""
    mariadb_cli(MARIADB_PORT, "FLUSH BINARY LOGS")
    first = mariadb_cli(MARIADB_PORT, "SHOW BINARY LOGS").stdout.split("\n")[1].split("\t")[0]

    def dump(port):
        r = subprocess.run(["mariadb-binlog", "--read-from-remote-server", "-h127.0.0.1", f"-P{port}", "-uroot", first],
                           capture_output=True, text=True, errors="replace", timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    expected = dump(MARIADB_PORT)
    assert dump(proxy.port) == expected
    assert "while a response was pending" not in proxy.log()
