"""The servers' accounts as the proxy reads them (--proxy-users-user): listed by the admin
interface in the order MariaDB itself searches them, which the test learns from the server by
logging in with each account's password and dropping the account that let the client in;
created and dropped accounts show within a refresh; no hash is ever shown."""
import os
import time

import pymysql

from conftest import MARIADB_PORT, MARIADB_SOCKET, free_port, mariadb_cli, wait_for_port
from test_admin import admin_args, table
from test_health_checks import wait_for
from test_metrics import promtool_check, samples, scrape

HOSTS = ["%", "127.0.0.%", "127.0.0.1", "127.0.%.1", "12_.0.0.1", "127.0.0._", "127.0.0.0/255.255.255.0",
         "127.%", "1%", "localhost", "%.0.0.1", "127.0.0.1%"]


def root():
    return pymysql.connect(unix_socket=MARIADB_SOCKET, user="root", autocommit=True)


def admin_accounts(port, user):
    result = mariadb_cli(port, "SELECT * FROM accounts", user="boss", password="s3cret pass")
    if not result.stdout.strip():
        return []  # the CLI prints no header for an empty result
    rows, header = table(result)
    assert header == ["user", "host", "plugin", "locked", "password_expired", "require"]
    return [row for row in rows if row[0] == user]


def logs_in(user, password):
    try:
        pymysql.connect(host="127.0.0.1", port=MARIADB_PORT, user=user, password=password).close()
        return True
    except (pymysql.err.OperationalError, RuntimeError):
        # RuntimeError: no account matched, and the server asked for a plugin PyMySQL lacks
        return False


def test_accounts_are_listed_in_the_servers_order(start_proxy):
    r = root()
    with r.cursor() as cur:
        cur.execute("CREATE OR REPLACE USER 'moon_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw'")
        cur.execute("GRANT SELECT ON mysql.global_priv TO 'moon_svc'@'127.0.0.1'")
        for host in HOSTS:
            cur.execute("CREATE OR REPLACE USER 'hp'@%s IDENTIFIED BY %s", (host, f"pw {host}"))
        cur.execute("CREATE OR REPLACE USER 'hq'@'10.%' IDENTIFIED BY 'x' REQUIRE SSL ACCOUNT LOCK")
        cur.execute("ALTER USER 'hq'@'10.%' PASSWORD EXPIRE")
        cur.execute("CREATE ROLE IF NOT EXISTS 'hrole'")
    admin_port = free_port()
    proxy = start_proxy(*admin_args(admin_port), "--proxy-users-user=moon_svc", "--proxy-users-refresh-interval=1",
                        env=dict(os.environ, MOONPROXY_USERS_PASSWORD="svc pw"))
    wait_for_port(admin_port)
    try:
        listed = wait_for(lambda: admin_accounts(admin_port, "hp"))
        assert sorted(row[1] for row in listed) == sorted(HOSTS)
        assert all(row[2:] == ["mysql_native_password", "no", "no", "none"] for row in listed)
        assert admin_accounts(admin_port, "hq") == [["hq", "10.%", "mysql_native_password", "yes", "yes", "any"]]
        assert admin_accounts(admin_port, "hrole") == []  # a role is no account
        out = mariadb_cli(admin_port, "SELECT * FROM accounts", user="boss", password="s3cret pass").stdout
        assert "*" not in out.replace("'%'", "") and "authentication" not in out  # no hash shown

        # the server's own order for a client on 127.0.0.1: log in, drop the account that let it in, again
        server_order = []
        left = list(HOSTS)
        while True:
            winner = next((h for h in left if logs_in("hp", f"pw {h}")), None)
            if winner is None:
                break
            server_order.append(winner)
            left.remove(winner)
            with r.cursor() as cur:
                cur.execute("DROP USER 'hp'@%s", (winner,))
        matching = [row[1] for row in listed if row[1] in server_order]
        assert matching == server_order, (matching, server_order)
        assert left == ["localhost"]  # a name, and the server resolves none

        # dropped and created accounts show within a refresh
        assert wait_for(lambda: [row[1] for row in admin_accounts(admin_port, "hp")] == ["localhost"])
        with r.cursor() as cur:
            cur.execute("CREATE USER 'hp'@'192.0.2.%' IDENTIFIED BY 'new'")
        assert wait_for(lambda: [row[1] for row in admin_accounts(admin_port, "hp")] == ["localhost", "192.0.2.%"])  # a name before a pattern
    finally:
        with r.cursor() as cur:
            for host in HOSTS + ["192.0.2.%"]:
                cur.execute("DROP USER IF EXISTS 'hp'@%s", (host,))
            cur.execute("DROP USER IF EXISTS 'hq'@'10.%'")
            cur.execute("DROP USER IF EXISTS 'moon_svc'@'127.0.0.1'")
            cur.execute("DROP ROLE IF EXISTS 'hrole'")


def test_a_service_account_that_cannot_log_in_is_reported_once(start_proxy):
    admin_port, metrics_port = free_port(), free_port()
    proxy = start_proxy(*admin_args(admin_port), "--proxy-users-user=nobody_here", "--proxy-users-refresh-interval=1",
                        f"--metrics-address=127.0.0.1:{metrics_port}", env=dict(os.environ, MOONPROXY_USERS_PASSWORD="wrong"))
    wait_for_port(admin_port)
    assert wait_for(lambda: "cannot read the accounts" in proxy.log())
    time.sleep(2.5)  # more refreshes, the same problem: not logged again
    assert proxy.log().count("cannot read the accounts") == 1
    text = scrape(metrics_port)
    promtool_check(text)
    assert samples(text)['moonproxy_account_refreshes_total{result="failed"}'] >= 2
    assert "moonproxy_accounts " not in text
    assert "1045" in proxy.log()
    assert admin_accounts(admin_port, "root") == []
    # the proxy itself serves as before
    c = proxy.connect()
    with c.cursor() as cur:
        cur.execute("SELECT 1")
    c.close()


def test_reading_the_accounts_leaves_no_aborted_connect(start_proxy):
    r = root()

    def aborted():
        with r.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Aborted_connects'")
            return int(cur.fetchone()[1])

    with r.cursor() as cur:
        cur.execute("CREATE OR REPLACE USER 'moon_svc'@'127.0.0.1' IDENTIFIED BY 'svc pw'")
        cur.execute("GRANT SELECT ON mysql.global_priv TO 'moon_svc'@'127.0.0.1'")
    try:
        admin_port, metrics_port = free_port(), free_port()
        start_proxy(*admin_args(admin_port), "--proxy-users-user=moon_svc", "--proxy-users-refresh-interval=1",
                    f"--metrics-address=127.0.0.1:{metrics_port}", env=dict(os.environ, MOONPROXY_USERS_PASSWORD="svc pw"))
        wait_for_port(admin_port)
        assert wait_for(lambda: admin_accounts(admin_port, "moon_svc"))
        before = aborted()
        time.sleep(2.5)  # two more readings
        assert aborted() == before  # each logged in and quit
        text = scrape(metrics_port)
        promtool_check(text)
        values = samples(text)
        assert values['moonproxy_account_refreshes_total{result="ok"}'] >= 3
        with r.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM mysql.global_priv WHERE IFNULL(JSON_VALUE(Priv, '$.is_role'), '0') <> '1'")
            assert values["moonproxy_accounts"] == cur.fetchone()[0]
    finally:
        with r.cursor() as cur:
            cur.execute("DROP USER IF EXISTS 'moon_svc'@'127.0.0.1'")
