#!/usr/bin/env bash
# Reload benchmark: how soon a human's `git commit` in the local workspace is
# served (commit to served, read from GET /status every 2 ms), over COMMITS
# commits, each a real `git commit` of a changed manifest; p50 and p90, from
# when `git commit` returned and from when it started. The peer is
# `git commit` itself, timed in the same loop. Then the memory of the daemon
# (VmRSS) serving MANIFESTS manifests (the most a commit may hold), committed
# the same way, and the reload of one more commit on top of them.
#
#   bench/reload.sh [COMMITS] [MANIFESTS]
#
# Needs: git, python3, curl; a release build (made here).
set -euo pipefail
commits=${1:-50}
manifests=${2:-1000}
. "$(dirname "$0")/common.sh"

"$bin" init "$tmp/ws" >/dev/null
git -C "$tmp/ws" config user.name bench
git -C "$tmp/ws" config user.email bench@localhost
port=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
wait_for "http://127.0.0.1:$port/healthz"

python3 - "$tmp/ws" "$port" "$commits" "$pid" "$manifests" <<'PY'
import http.client, json, os, subprocess, sys, time
ws, port, commits, pid, manifests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
conn = http.client.HTTPConnection("127.0.0.1", port)
def served():
    conn.request("GET", "/status", headers={"Authorization": "Bearer bench"})
    return json.loads(conn.getresponse().read())["commit"]
def git(*args):
    return subprocess.run(["git", "-C", ws, *args], check=True, capture_output=True, text=True).stdout.strip()
def commit_and_wait(message, timeout=10.0):
    start = time.monotonic()
    git("commit", "-q", "-am", message)
    committed = time.monotonic()
    head = git("rev-parse", "HEAD")
    while served() != head:
        if time.monotonic() - start > timeout:
            conn.request("GET", "/status", headers={"Authorization": "Bearer bench"})
            sys.exit(f"{head} not served within {timeout} s: {conn.getresponse().read()[:2000]}")
        time.sleep(0.002)
    now = time.monotonic()
    return (now - committed) * 1000, (now - start) * 1000, (committed - start) * 1000
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
hello = os.path.join(ws, "manifests", "hello.yaml")
text = open(hello).read()
after, whole, gits = [], [], []
for i in range(commits):
    with open(hello, "w") as f:
        f.write(text.replace("description:", f"description: Change {i}", 1))
    a, w, g = commit_and_wait(f"Change hello ({i})")
    after.append(a); whole.append(w); gits.append(g)
    time.sleep(0.05)
print(f"{commits} commits, commit to served (GET /status every 2 ms):")
print(f"  after `git commit` returned: p50 {pct(after, 50):.1f} ms, p90 {pct(after, 90):.1f} ms, max {max(after):.1f} ms")
print(f"  from `git commit` starting : p50 {pct(whole, 50):.1f} ms, p90 {pct(whole, 90):.1f} ms")
print(f"  `git commit` itself        : p50 {pct(gits, 50):.1f} ms, p90 {pct(gits, 90):.1f} ms")

# Memory with many manifests: add them in one human commit, wait until served.
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = rss()
present = len(os.listdir(os.path.join(ws, "manifests")))
for i in range(manifests - present):
    with open(os.path.join(ws, "manifests", f"bench-{i:04}.yaml"), "w") as f:
        f.write(f"name: bench-{i:04}\ndescription: Endpoint {i} of the benchmark.\nmethod: GET\n"
                f"path: /bench/{i}/{{who}}\nscript: scripts/sample_script.sh\nargs: [\"{{who}}\"]\n"
                f"params:\n  who: {{type: string, maxLength: 64}}\n")
git("add", "-A")
a, _, _ = commit_and_wait(f"Add endpoints up to {manifests}", timeout=60)
conn.request("GET", "/endpoints", headers={"Authorization": "Bearer bench"})
count = len(json.loads(conn.getresponse().read())["endpoints"])
print(f"{count} manifests committed: served {a:.0f} ms after the commit; "
      f"daemon VmRSS {rss():.1f} MiB (with the template's {present}: {before:.1f} MiB)")
# One more commit on top of the 1,000: the reload of a large registry.
after = []
for i in range(10):
    with open(hello, "w") as f:
        f.write(text.replace("description:", f"description: Again {i}", 1))
    after.append(commit_and_wait(f"Change hello [{i}]")[0])
    time.sleep(0.05)
print(f"  then commit to served with {count} manifests, 10 commits: p50 {pct(after, 50):.1f} ms, p90 {pct(after, 90):.1f} ms")
print(f"  daemon VmRSS after these reloads: {rss():.1f} MiB")
PY

# The memory of a daemon started on the 1,000 manifests (one registry built).
kill "$pid"; wait "$pid" 2>/dev/null || true
port=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
wait_for "http://127.0.0.1:$port/healthz"
for _ in $(seq 20); do curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$port/endpoints" >/dev/null; done
awk '/VmRSS/ {printf "daemon started on them: VmRSS %.1f MiB (after 20 GET /endpoints)\n", $2 / 1024}' "/proc/$pid/status"
