#!/usr/bin/env bash
# Request-path benchmark: requests per second of GET /list-scripts (bearer
# token checked, the workspace's `scripts/` listed, JSON answered) served by
# dynapi, against the seed's FastAPI design of the same route
# (bench/list_scripts.py) under uvicorn, on the same workspace, measured in one
# run with wrk. Then a second round in the other order, so that neither side
# always runs on a machine the other just warmed. Prints both rates and the
# ratio of each round.
#
#   bench/routes.sh [SECONDS] [CONNECTIONS]
#
# Needs: wrk (apt-get install wrk), python3 with venv; a release build and the
# pinned PyPI packages of bench/requirements.txt (in a venv under target/),
# both made here.
set -euo pipefail
secs=${1:-10}
conns=${2:-8}
. "$(dirname "$0")/common.sh"

venv="$here/target/bench-python"
if ! cmp -s "$here/bench/requirements.txt" "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/bench/requirements.txt"
  cp "$here/bench/requirements.txt" "$venv/requirements.txt"
fi

"$bin" init "$tmp/ws" >/dev/null
dport=$(free_port); uport=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$dport" >/dev/null 2>&1 &
API_TOKEN=bench WORKSPACE="$tmp/ws" "$venv/bin/uvicorn" list_scripts:app --app-dir "$here/bench" \
  --host 127.0.0.1 --port "$uport" --log-level warning --no-access-log >/dev/null 2>&1 &
wait_for "http://127.0.0.1:$dport/healthz"
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$uport/docs" && break; sleep 0.1; done

# Both answer the same listing, and both refuse a wrong token.
ours=$(curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$dport/list-scripts")
theirs=$(curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$uport/list-scripts")
same=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]) == json.loads(sys.argv[2]))' "$ours" "$theirs")
[ "$same" = True ] || { echo "the two sides answer differently: $ours / $theirs" >&2; exit 1; }
for port in "$dport" "$uport"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer wrong" "http://127.0.0.1:$port/list-scripts")
  [ "$code" = 401 ] || { echo "127.0.0.1:$port took a wrong token ($code)" >&2; exit 1; }
done
echo "answer: $ours"

rps() {
  local out; out=$(wrk -t2 -c"$conns" -d"${secs}s" -H "Authorization: Bearer bench" "$1")
  if grep -q "Non-2xx" <<<"$out"; then echo "answers that are not 2xx: $out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
echo "wrk: ${secs}s, $conns connections, GET /list-scripts"
for round in 1 2; do
  if [ "$round" = 1 ]; then
    d=$(rps "http://127.0.0.1:$dport/list-scripts"); u=$(rps "http://127.0.0.1:$uport/list-scripts")
  else
    u=$(rps "http://127.0.0.1:$uport/list-scripts"); d=$(rps "http://127.0.0.1:$dport/list-scripts")
  fi
  python3 -c "print(f'round $round: dynapi $d requests/s, FastAPI/uvicorn $u requests/s, ratio {float(\"$d\") / float(\"$u\"):.1f}x')"
done
