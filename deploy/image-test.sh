#!/usr/bin/env bash
# deploy/image-test.sh: builds dynapi's Docker image with podman and checks it
# as a user would (issue 24). Run it from a clone, as root, on a Debian
# bookworm machine without a Docker engine or a registry:
#
#   deploy/image-test.sh
#
# It installs podman, runc, debootstrap and podman-compose when missing, makes
# the two base images the Dockerfile names from Debian's packages (tagged
# locally as docker.io/library/debian:bookworm-slim and
# docker.io/library/rust:1-bookworm, so the Dockerfile stays what a user with
# Docker Hub builds; the Rust image carries this machine's toolchain), builds
# the image, runs it, and checks: the daemon runs as the non-root user, makes
# the workspace in the volume and prints its token, answers /healthz; an
# endpoint's script runs sandboxed, the process limit included, and /status
# says so; a write is a commit in the volume; `podman stop` ends it within the
# grace period and leaves no process; a restart on the same volume keeps the
# token and the history; then the same for docker-compose.yml with
# podman-compose. Figures (image size, start-up time) are printed at the end.
#
# Podman runs here with runc and cgroupfs (crun refuses this machine's hybrid
# cgroups) and containers limited to 1024 processes and descriptors (the
# defaults cannot be raised here): a containers.conf of its own says so, so
# every podman command below is the one a user would type.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${DYNAPI_IMAGE_WORK:-$ROOT/target/image-test}
IMAGE=localhost/dynapi:image-test
NAME=dynapi-image-test
VOLUME=dynapi-image-test-data
mkdir -p "$WORK"

step() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    podman logs "$NAME" 2>&1 | tail -30 >&2 || true
    exit 1
}
check() { printf '  ok: %s\n' "$*"; }

cleanup() {
    podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    if [[ -f $WORK/compose/docker-compose.yml ]]; then
        (cd "$WORK/compose" && podman-compose -p dynapi-image-test down -v >/dev/null 2>&1) || true
    fi
}
trap cleanup EXIT

step "tools"
missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap podman-compose:podman-compose curl:curl; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
podman --version
cleanup

# A Debian root made by debootstrap, without what debian's slim images leave
# out (documentation, manual pages, translations, package lists).
bootstrap() { # DIR [PACKAGES]
    local dir=$1 include=${2:-}
    rm -rf "$dir"
    debootstrap --variant=minbase ${include:+--include=$include} bookworm "$dir" \
        http://deb.debian.org/debian >"$dir.log" 2>&1 || {
        tail -20 "$dir.log"
        return 1
    }
    rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
        "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
    # As Debian's images: updates and security in the sources, downloaded
    # packages not kept, and what packages install later left out the same way.
    rm -f "$dir/etc/apt/sources.list"
    cat >"$dir/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
}

step "base images"
if ! podman image exists docker.io/library/debian:bookworm-slim; then
    bootstrap "$WORK/slim"
    tar -C "$WORK/slim" -c . | podman import \
        --change 'CMD ["bash"]' - docker.io/library/debian:bookworm-slim >/dev/null
    rm -rf "$WORK/slim"
fi
check "debian:bookworm-slim"
if ! podman image exists docker.io/library/rust:1-bookworm; then
    bootstrap "$WORK/rust" ca-certificates,gcc,libc6-dev,make,pkg-config,git,curl,xz-utils
    # Laid out as the official image: rustup's home in /usr/local/rustup,
    # cargo's in /usr/local/cargo, the proxies on PATH.
    sysroot=$(rustc --print sysroot)
    toolchain=$(basename "$sysroot")
    mkdir -p "$WORK/rust/usr/local/rustup/toolchains" "$WORK/rust/usr/local/cargo/bin"
    tar -C "$(dirname "$sysroot")" --exclude="$toolchain/share/doc" -c "$toolchain" |
        tar -C "$WORK/rust/usr/local/rustup/toolchains" -x
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" \
        >"$WORK/rust/usr/local/rustup/settings.toml"
    rustup=$(command -v rustup)
    cp "$rustup" "$WORK/rust/usr/local/cargo/bin/rustup"
    for proxy in cargo rustc rustdoc; do
        ln -f "$WORK/rust/usr/local/cargo/bin/rustup" "$WORK/rust/usr/local/cargo/bin/$proxy"
    done
    tar -C "$WORK/rust" -c . | podman import \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        - docker.io/library/rust:1-bookworm >/dev/null
    rm -rf "$WORK/rust"
fi
check "rust:1-bookworm ($(podman run --rm docker.io/library/rust:1-bookworm cargo --version))"

step "build"
# The crates come from this machine's cargo cache (fetched first), so the
# build in the image downloads nothing twice.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
(cd "$ROOT" && cargo fetch --locked)
started=$(date +%s)
podman build --network host \
    --volume "$cargo_home/registry:/usr/local/cargo/registry" \
    -t "$IMAGE" "$ROOT"
built=$(($(date +%s) - started))
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
check "built in ${built}s; image $((size / 1000 / 1000)) MB"

# Waits for /healthz on PORT; prints the milliseconds it took since START_NS.
healthy() { # PORT START_NS
    for _ in $(seq 1 300); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$1/healthz" 2>/dev/null; then
            echo $((($(date +%s%N) - $2) / 1000000))
            return 0
        fi
        sleep 0.05
    done
    return 1
}
api() { # METHOD PATH [JSON]
    curl -sS -X "$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        ${3:+--data "$3"} "http://127.0.0.1:$PORT$2"
}
run() {
    local t0
    t0=$(date +%s%N)
    podman run -d --name "$NAME" -p 127.0.0.1::8000 -v "$VOLUME:/data" "$IMAGE" >/dev/null
    PORT=$(podman port "$NAME" 8000/tcp | sed 's/.*://')
    STARTUP_MS=$(healthy "$PORT" "$t0") || fail "no /healthz within 15 s"
}

step "run"
podman volume create "$VOLUME" >/dev/null
run
check "/healthz 200, ${STARTUP_MS} ms after podman run"
uid=$(podman top "$NAME" user,comm | awk '$2 == "dynapi" {print $1}')
[[ $uid == dynapi ]] || fail "the daemon runs as '$uid', not the image's user dynapi"
check "the daemon runs as user 10001 (dynapi), under tini"
podman exec "$NAME" test -d /data/workspace/.git || fail "no workspace in the volume"
check "the workspace is in the volume (/data/workspace)"
TOKEN=$(podman logs "$NAME" 2>/dev/null | grep -A1 '^Token (all scopes' | tail -1 | tr -d ' ')
[[ -n $TOKEN ]] || fail "no token printed"
check "the token is printed"

status=$(api GET /status)
python3 - "$status" <<'EOF' || fail "/status: $status"
import json, sys
s = json.loads(sys.argv[1])["sandbox"]
assert s["scripts_run"], s
missing = [k for k, v in s["enforced"].items() if not v]
print("  sandbox: Landlock ABI", s["landlock_abi"], "; not enforced:", missing or "nothing", "; missing:", s["missing"] or "nothing")
assert s["enforced"]["processes"], "the process limit is not enforced"
assert s["enforced"]["filesystem"], "the filesystem rules are not enforced"
EOF
check "/status: the sandbox is enforced, the process limit included"

# An endpoint whose script tries to start 400 processes (the limit is 256 a
# run) and to write outside the workspace, and leaves a process behind.
probe=$(python3 - <<'EOF'
import json
script = """#!/usr/bin/env python3
import json, os, subprocess, time
started = refused = 0
children = []
for _ in range(400):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(1)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
try:
    open("/data/outside", "w")
    outside = "written"
except OSError as e:
    outside = e.strerror
subprocess.Popen(["setsid", "sleep", "317"])
print(json.dumps({"started": len(children), "refused": refused, "outside": outside, "uid": os.getuid()}))
"""
print(json.dumps({
    "manifest": {"name": "probe", "description": "Tries the sandbox.", "method": "POST",
                 "path": "/probe", "script": "scripts/probe.py", "output": "json", "timeout": "30s"},
    "script": {"path": "scripts/probe.py", "content": script},
    "message": "Add the sandbox probe",
}))
EOF
)
added=$(api POST /endpoints "$probe")
[[ $added == *'"live":true'* ]] || fail "adding an endpoint: $added"
out=$(api POST /probe '{}')
python3 - "$out" <<'EOF' || fail "the probe: $out"
import json, sys
r = json.loads(sys.argv[1])
o = r["output"]
print("  probe:", o)
assert o["refused"] > 0 and o["started"] <= 256, "the process limit did not hold"
assert o["outside"] != "written", "the script wrote outside the workspace"
assert o["uid"] == 10001
EOF
sleep 0.5
podman exec "$NAME" sh -c 'for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr "\0" " "; echo; done' |
    grep -q '^sleep 317' && fail "a process the script left (setsid sleep 317) outlived its run"
check "the script ran sandboxed: process limit held, no write outside, nothing left running"

before=$(podman exec "$NAME" git -C /data/workspace rev-list --count HEAD)
w=$(api PUT /files/notes/image-test.md '{"content": "written in the container\n", "message": "A note from the image test"}')
[[ $w == *'"commit"'* ]] || fail "the write: $w"
after=$(podman exec "$NAME" git -C /data/workspace rev-list --count HEAD)
subject=$(podman exec "$NAME" git -C /data/workspace log -1 --format=%s)
[[ $after == $((before + 1)) && $subject == "A note from the image test" ]] ||
    fail "the write is not one commit: $before -> $after, '$subject'"
check "a write is one commit in the volume ('$subject')"

step "stop"
# A call still running when the stop comes (its script left a process in a
# session of its own): podman's default stop timeout (10 s, as Docker's) is
# enough for the image's grace (6 s), the script killed, the call answered,
# the daemon's exit; nothing is left.
slow=$(python3 -c 'import json; print(json.dumps({"manifest": {"name": "slow", "description": "Sleeps.", "method": "POST", "path": "/slow", "script": "scripts/slow.sh", "timeout": "2m"}, "script": {"path": "scripts/slow.sh", "content": "#!/bin/sh\nsetsid sleep 318 &\nsleep 120\n"}}))')
api POST /endpoints "$slow" >/dev/null
curl -sS -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" \
    "http://127.0.0.1:$PORT/slow" >"$WORK/slow.status" 2>/dev/null &
caller=$!
sleep 1
t0=$(date +%s%N)
podman stop "$NAME" >/dev/null
stop_ms=$((($(date +%s%N) - t0) / 1000000))
wait "$caller" || true
answered=$(cat "$WORK/slow.status")
code=$(podman inspect "$NAME" --format '{{.State.ExitCode}}')
[[ $code == 0 ]] || fail "the daemon exited with $code on SIGTERM (137: podman's SIGKILL after 10 s)"
[[ $answered != 000 ]] || fail "the running call got no answer"
podman logs "$NAME" 2>&1 | grep -q 'shutting down' || fail "no shutdown in the log"
if pgrep -u 10001 >/dev/null; then
    ps -o pid,user,cmd -u 10001
    fail "processes of the container's user are left"
fi
check "podman stop: exit 0 after ${stop_ms} ms with a script running (its call answered $answered), no process left"

step "restart on the same volume"
podman rm "$NAME" >/dev/null
run
[[ $(api GET /files/notes/image-test.md) == *'written in the container'* ]] ||
    fail "the old token or the file is gone"
podman logs "$NAME" 2>/dev/null | grep -q '^Token (all scopes' && fail "a new token was made"
count=$(podman exec "$NAME" git -C /data/workspace rev-list --count HEAD)
((count >= after)) || fail "history lost: $count commits"
check "the token and the history ($count commits) are kept; /healthz ${STARTUP_MS} ms after podman run"
podman rm -f -t 5 "$NAME" >/dev/null
podman volume rm "$VOLUME" >/dev/null

step "compose"
# podman-compose with the project's docker-compose.yml, on a port of its own.
mkdir -p "$WORK/compose"
sed -e 's|^    build: \.|    build: '"$ROOT"'|' -e 's|"8000:8000"|"127.0.0.1:18977:8000"|' \
    -e 's|image: dynapi:latest|image: '"$IMAGE"'|' \
    "$ROOT/docker-compose.yml" >"$WORK/compose/docker-compose.yml"
cd "$WORK/compose"
PORT=18977
t0=$(date +%s%N)
podman-compose -p dynapi-image-test up -d >compose.log 2>&1 || { cat compose.log; fail "podman-compose up"; }
ms=$(healthy "$PORT" "$t0") || { cat compose.log; fail "compose: no /healthz"; }
cname=$(podman ps --filter label=io.podman.compose.project=dynapi-image-test --format '{{.Names}}' | head -1)
TOKEN=$(podman logs "$cname" 2>/dev/null | grep -A1 '^Token (all scopes' | tail -1 | tr -d ' ')
[[ -n $TOKEN ]] || fail "compose: no token printed"
w=$(api PUT /files/notes/compose.md '{"content": "from compose\n"}')
[[ $w == *'"commit"'* ]] || fail "compose: the write: $w"
podman exec "$cname" git -C /data/workspace log -1 --format=%s | grep -q . || fail "compose: no commit"
t0=$(date +%s%N)
podman-compose -p dynapi-image-test stop >>compose.log 2>&1
stop_ms=$((($(date +%s%N) - t0) / 1000000))
code=$(podman inspect "$cname" --format '{{.State.ExitCode}}')
[[ $code == 0 ]] || fail "compose: exit code $code"
podman-compose -p dynapi-image-test start >>compose.log 2>&1
ms2=$(healthy "$PORT" "$(date +%s%N)") || fail "compose: no /healthz after start"
[[ $(api GET /files/notes/compose.md) == *'from compose'* ]] || fail "compose: token or file lost"
check "compose: /healthz ${ms} ms after up, a write is a commit, stop exit 0 in ${stop_ms} ms, start keeps token and history"

printf '\nimage-test: all checks passed. Image %s MB, built in %s s, /healthz %s ms after podman run.\n' \
    "$((size / 1000 / 1000))" "$built" "$STARTUP_MS"
