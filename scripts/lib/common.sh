# Shared helpers for MoonProxy's scripts (sourced, not executed).
# Everything here runs on a fresh Debian machine with the Swift toolchain and nothing else.

MOON_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# How MoonProxy is built for real use (demo, benchmark, deployment): a release build with
# Swift's run-time exclusivity checks on, as in debug builds and the test suite, and the Swift
# runtime linked in (one binary that needs no Swift toolchain where it runs; the runtime's
# thread-local lookups and calls are direct then: about 5 % fewer instructions per query and per
# connection, see README "Measuring"). The link takes about two minutes.
release_build() {
    swift build -c release --product moonproxy --static-swift-stdlib "$@"
}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Installs the Debian packages a script needs, only when one is missing.
ensure_packages() {
    local missing=()
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_python_packages() {
    local p missing=()
    local module
    for p in "$@"; do
        module=${p,,}
        [ "$module" = mysql-connector-python ] && module=mysql.connector
        python3 -c "import $module" 2>/dev/null || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Python packages: ${missing[*]}"
    python3 -m pip install -q "${missing[@]}" 2>/dev/null && return 0
    # A Debian system Python refuses pip (PEP 668): use Debian's packages instead.
    local debs=()
    for p in "${missing[@]}"; do
        case ${p,,} in
            mysql-connector-python) debs+=(python3-mysql.connector) ;;
            *) debs+=("python3-${p,,}") ;;
        esac
    done
    ensure_packages "${debs[@]}"
}

# Prints a TCP port below the ephemeral range that nothing listens on.
free_port() {
    python3 - "$@" <<'PY'
import random, socket, sys
for _ in range(200):
    port = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    sys.exit(0)
sys.exit("no free port found")
PY
}

# start_mariadb DIR PORT [OPTIONS]: a throwaway MariaDB on 127.0.0.1:PORT with its data, socket and
# log in DIR, and OPTIONS (newline-separated) added to its [mariadbd] section.
# Runs as root with --user=root; root@localhost and root@127.0.0.1 have no password.
# Test certificates, made with openssl: a CA, a server certificate for localhost and 127.0.0.1,
# a client certificate, and a second CA with its own client certificate (trusted by nobody).
make_test_certs() {
    local dir=$1 name cn ca
    mkdir -p "$dir"
    (
        cd "$dir" || exit 1
        for ca in ca other-ca; do
            openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=MoonProxy test $ca" \
                -keyout "$ca-key.pem" -out "$ca.pem" 2>/dev/null || exit 1
        done
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
        for name in server:ca server2:ca client:ca other-client:other-ca; do
            ca=${name#*:}; name=${name%%:*}
            case $name in server*) cn=localhost;; *) cn=moon-$name;; esac
            openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null || exit 1
            openssl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca-key.pem" -CAcreateserial -days 3650 \
                -extfile san.ext -out "$name.pem" 2>/dev/null || exit 1
        done
    )
}

start_mariadb() {
    local dir=$1 port=$2 extra=${3:-}
    mkdir -p "$dir"
    cat >"$dir/my.cnf" <<CNF
[mariadbd]
user=root
datadir=$dir/data
socket=$dir/mysqld.sock
pid-file=$dir/mysqld.pid
log-error=$dir/error.log
port=$port
bind-address=127.0.0.1
skip-name-resolve
max_allowed_packet=64M
local_infile=1
plugin-load-add=auth_ed25519
innodb_buffer_pool_size=256M
innodb_log_file_size=64M
innodb_flush_log_at_trx_commit=2
max_connections=1000
$extra
CNF
    if [ ! -d "$dir/data/mysql" ]; then
        mariadb-install-db --defaults-file="$dir/my.cnf" --auth-root-authentication-method=normal \
            --skip-test-db >"$dir/install.log" 2>&1 || { cat "$dir/install.log" >&2; return 1; }
    fi
    mariadbd --defaults-file="$dir/my.cnf" >/dev/null 2>&1 &
    local i
    for i in $(seq 1 100); do
        if mariadb --socket="$dir/mysqld.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
            mariadb --socket="$dir/mysqld.sock" -uroot -e "
                CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
                GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
                FLUSH PRIVILEGES;" || return 1
            return 0
        fi
        sleep 0.2
    done
    echo "MariaDB did not start; see $dir/error.log" >&2
    tail -20 "$dir/error.log" >&2
    return 1
}

stop_mariadb() {
    local dir=$1
    [ -f "$dir/mysqld.pid" ] || return 0
    local pid
    pid=$(cat "$dir/mysqld.pid" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || return 0
    local i
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}
