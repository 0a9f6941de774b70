#!/usr/bin/env bash
# Write benchmark: commits per second when many clients write different files at
# once through dynapi (PUT /files/{path}, each write one commit), against the git
# command line making the same kind of commits one after another (write the file,
# `git add`, `git commit`) in a copy of the same repository. Prints both rates and
# their ratio, then checks that every acknowledged dynapi write is a commit.
#
#   bench/writes.sh [SECONDS] [CONNECTIONS]
#
# Needs: wrk (apt-get install wrk), git, python3, curl; a release build (made here).
set -euo pipefail
secs=${1:-10}
conns=${2:-8}
. "$(dirname "$0")/common.sh"

"$bin" init "$tmp/ws" >/dev/null
cp -r "$tmp/ws" "$tmp/peer"

port=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
wait_for "http://127.0.0.1:$port/healthz"

cat > "$tmp/put.lua" <<'LUA'
-- Every request writes a new file: thread t, request n -> bench/t<t>-<n>.txt
local threads = 0
function setup(thread) thread:set("id", threads); threads = threads + 1 end
function init(args) n = 0 end
function request()
  n = n + 1
  return wrk.format("PUT", "/files/bench/t" .. id .. "-" .. n .. ".txt",
    {["Authorization"] = "Bearer bench", ["Content-Type"] = "application/json"},
    '{"content": "line ' .. n .. '\\n"}')
end
statuses = {}
function response(status) if status ~= 201 then print("unexpected status " .. status) end end
LUA
before=$(git -C "$tmp/ws" rev-list --count HEAD)
out=$(wrk -t2 -c"$conns" -d"${secs}s" -s "$tmp/put.lua" "http://127.0.0.1:$port")
echo "$out" | grep -q "unexpected status" && { echo "$out" | grep "unexpected" | sort | uniq -c; exit 1; }
total=$(echo "$out" | awk '/requests in/ {print $1}')
after=$(git -C "$tmp/ws" rev-list --count HEAD)
ours=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
echo "dynapi: $total writes acknowledged, $((after - before)) commits, $ours commits/s ($conns clients)"
# wrk stops mid-request at the deadline: a request cut then may still commit.
[ $((after - before)) -ge "$total" ] || { echo "acknowledged writes are missing" >&2; exit 1; }

count=0
start=$(date +%s%N)
end=$((start + secs * 1000000000))
cd "$tmp/peer"
mkdir -p bench
while [ "$(date +%s%N)" -lt "$end" ]; do
  count=$((count + 1))
  echo "line $count" > "bench/p-$count.txt"
  git add "bench/p-$count.txt"
  git -c user.name=bench -c user.email=bench@localhost commit -qm "Write bench/p-$count.txt"
done
elapsed=$(( $(date +%s%N) - start ))
theirs=$(python3 -c "print('%.1f' % ($count / ($elapsed / 1e9)))")
echo "git CLI: $count commits, $theirs commits/s (one after another)"
python3 -c "print('ratio dynapi/git: %.2f' % ($ours / $theirs))"
