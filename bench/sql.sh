#!/usr/bin/env bash
# SQL benchmark: a 100,000-row query answered as JSON by POST /sql, against the
# sqlite3 command line's `-json` output of the same query on the same file.
# Each side runs RUNS times after a warm-up; prints the medians and their ratio.
# dynapi's figure includes the HTTP round trip.
#
#   bench/sql.sh [ROWS] [RUNS]
#
# Needs: sqlite3 (apt-get install sqlite3), python3, curl; a release build (made here).
rows=${1:-100000}
runs=${2:-11}
. "$(dirname "$0")/common.sh"

"$bin" init "$tmp/ws" >/dev/null
mkdir -p "$tmp/ws/data"
python3 - "$tmp/ws/data/bench.db" "$rows" <<'PY'
import random, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, amount REAL, qty INTEGER, note TEXT)")
rng = random.Random(7)
db.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)",
    ((i, f"item {i}", rng.random() * 1000, rng.randrange(1000), None if i % 3 else "a note")
     for i in range(int(sys.argv[2]))))
db.commit()
PY
cat > "$tmp/ws/dynapi.yaml" <<'YAML'
databases:
  bench:
    url: sqlite:data/bench.db
YAML
git -C "$tmp/ws" add -A
git -C "$tmp/ws" -c user.name=bench -c user.email=bench@localhost commit -qm "Name the bench database"

port=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
wait_for "http://127.0.0.1:$port/healthz"

query="SELECT * FROM t"
body=$(python3 -c 'import json,sys; print(json.dumps({"database": "bench", "query": sys.argv[1], "max_rows": 100000, "max_chars": 67108864}))' "$query")
ours() { curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$port/sql" -d "$body"; }
theirs() { sqlite3 -json "$tmp/ws/data/bench.db" "$query"; }
# Both sides must answer the same rows before they are timed.
n_ours=$(ours | python3 -c 'import json,sys; a=json.load(sys.stdin); print(a["row_count"], a["truncated"])')
n_theirs=$(theirs | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "rows: dynapi $n_ours (count, truncated), sqlite3 $n_theirs"
[ "$n_ours" = "$n_theirs False" ] || { echo "the two sides disagree" >&2; exit 1; }

ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ours >/dev/null; theirs >/dev/null
d=$(for _ in $(seq "$runs"); do ms ours; done | median)
s=$(for _ in $(seq "$runs"); do ms theirs; done | median)
size=$(ours | wc -c)
echo "'$query', $n_theirs rows, $size bytes of JSON, $runs runs each: dynapi ${d} ms, sqlite3 -json ${s} ms (median)"
python3 -c "print('ratio sqlite3/dynapi: %.2f (higher is faster)' % ($s / max($d, 1)))"
