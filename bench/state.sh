#!/usr/bin/env bash
# Shared-state benchmark: what keeping state in PostgreSQL (`--state`, for
# replicas) costs a request against the embedded default (SQLite in
# .git/dynapi), in one run with wrk. Two daemons on copies of one workspace,
# one with a throwaway PostgreSQL cluster (Debian's server, started here in
# the temp folder) as its shared state; each signs in an OAuth client (every
# request with its access token reads the store), then:
#   - GET /status with the OAuth access token (a store lookup per request);
#   - GET /jobs/{id} of a finished job the daemon ran (its memory answers);
#   - the same GET /jobs/{id} on a second replica, which reads the shared row.
# Prints requests/s and the ratios shared/embedded.
#
#   bench/state.sh [SECONDS] [CONNECTIONS]
#
# Needs: wrk and PostgreSQL's server (apt-get install wrk postgresql), a release
# build (made here).
set -euo pipefail
secs=${1:-10}
conns=${2:-8}
. "$(dirname "$0")/common.sh"

pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$tmp/pg"
[ "$(id -u)" = 0 ] && chown postgres "$tmp/pg" && chmod 755 "$tmp"
pgport=$(free_port)
pg "$pgbin/initdb" -D "$tmp/pg/data" -U postgres --auth=trust -E UTF8 >/dev/null
pg "$pgbin/pg_ctl" -D "$tmp/pg/data" -l "$tmp/pg/log" -w \
  -o "-p $pgport -k $tmp/pg -c listen_addresses=127.0.0.1" start >/dev/null
trap 'pg "$pgbin/pg_ctl" -D "$tmp/pg/data" -m immediate stop >/dev/null 2>&1; kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
state="postgres://postgres@127.0.0.1:$pgport/postgres?sslmode=disable"

"$bin" init "$tmp/ws" >/dev/null
cat > "$tmp/ws/scripts/quick.sh" <<'S'
#!/bin/sh
echo "done"
S
chmod +x "$tmp/ws/scripts/quick.sh"
printf 'name: quick\ndescription: Prints one line.\nmethod: POST\npath: /quick\nscript: scripts/quick.sh\n' \
  > "$tmp/ws/manifests/quick.yaml"
git -C "$tmp/ws" add -A
git -C "$tmp/ws" -c user.name=bench -c user.email=bench@localhost commit -qm "Add quick"
for w in ws-a ws-b; do cp -r "$tmp/ws" "$tmp/$w"; done

eport=$(free_port); aport=$(free_port); bport=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$eport" >/dev/null 2>&1 &
for p in "ws-a $aport" "ws-b $bport"; do
  set -- $p
  DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/$1" --listen "127.0.0.1:$2" \
    --state "$state" --public-url "http://replicas.test" >/dev/null 2>&1 &
done
for port in $eport $aport $bport; do wait_for "http://127.0.0.1:$port/healthz"; done

embedded=$(sign_in "http://127.0.0.1:$eport" "http://127.0.0.1:$eport")
shared=$(sign_in "http://127.0.0.1:$aport" "http://replicas.test")
curl -fs -H "Authorization: Bearer $embedded" "http://127.0.0.1:$eport/status" >/dev/null
curl -fs -H "Authorization: Bearer $shared" "http://127.0.0.1:$bport/status" >/dev/null

# A finished job on the embedded daemon and on replica a.
job() { curl -fs -X POST -H "Authorization: Bearer bench" "$1/call/quick?async=true" -d '{}' | json job_id; }
ejob=$(job "http://127.0.0.1:$eport"); sjob=$(job "http://127.0.0.1:$aport")
sleep 2
curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$bport/jobs/$sjob" | grep -q '"succeeded"'

rps() {
  local out; out=$(wrk -t2 -c"$conns" -d"${secs}s" "$@")
  if grep -q "Non-2xx" <<<"$out"; then echo "answers that are not 2xx: $out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
echo "wrk: ${secs}s, $conns connections"
e_status=$(rps -H "Authorization: Bearer $embedded" "http://127.0.0.1:$eport/status")
s_status=$(rps -H "Authorization: Bearer $shared" "http://127.0.0.1:$bport/status")
e_job=$(rps -H "Authorization: Bearer bench" "http://127.0.0.1:$eport/jobs/$ejob")
s_job=$(rps -H "Authorization: Bearer bench" "http://127.0.0.1:$bport/jobs/$sjob")
echo "GET /status, OAuth token: embedded $e_status requests/s, shared $s_status"
echo "GET /jobs/{id}:           embedded (its memory) $e_job requests/s, shared (another replica's job) $s_job"
python3 - "$e_status" "$s_status" "$e_job" "$s_job" "$conns" <<'PY'
import sys
es, ss, ej, sj, conns = map(float, sys.argv[1:])
print(f"ratio shared/embedded: OAuth request {ss / es:.2f} ({(conns / ss - conns / es) * 1000:.2f} ms added), "
      f"another replica's job {sj / ej:.2f} ({(conns / sj - conns / ej) * 1000:.2f} ms added)")
PY
