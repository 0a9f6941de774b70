#!/usr/bin/env bash
# Search benchmark: dynapi's GET /search against the `rg` command line on the same
# generated tree (text files in nested folders, some binary files, a .gitignore'd
# folder), same query, same settings (hidden files searched, .gitignore honoured,
# .git skipped). Each side runs RUNS times after a warm-up; prints the medians and
# their ratio. dynapi's figure includes the HTTP round trip and JSON.
#
#   bench/search.sh [FILES] [RUNS]
#
# Needs: ripgrep (apt-get install ripgrep), python3, curl; a release build (made here).
set -euo pipefail
files=${1:-20000}
runs=${2:-15}
. "$(dirname "$0")/common.sh"

"$bin" init "$tmp/ws" >/dev/null
python3 - "$tmp/ws" "$files" <<'PY'
import os, random, sys
root, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rng.randint(3, 9))) for _ in range(5000)]
for i in range(count):
    folder = os.path.join(root, 'src', f'mod{i % 50:02}', f'part{i % 7}')
    os.makedirs(folder, exist_ok=True)
    lines = []
    for n in range(rng.randint(80, 240)):
        line = ' '.join(rng.choices(words, k=rng.randint(4, 14)))
        if rng.random() < 0.00003:
            line += ' needle_7f3a'
        lines.append(line)
    with open(os.path.join(folder, f'file{i}.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    if i % 200 == 0:
        with open(os.path.join(folder, f'blob{i}.bin'), 'wb') as f:
            f.write(rng.randbytes(4096) + b'\0needle_7f3a')
os.makedirs(os.path.join(root, 'data'), exist_ok=True)
with open(os.path.join(root, 'data', 'ignored.txt'), 'w') as f:
    f.write('needle_7f3a\n' * 1000)
PY
du -sh "$tmp/ws/src" | awk '{print "tree: " $1 " in '"$files"' text files"}'

port=$(free_port)
DYNAPI_TOKEN=bench RUST_LOG=warn "$bin" serve --workspace "$tmp/ws" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
wait_for "http://127.0.0.1:$port/healthz"

query() { curl -fs -H "Authorization: Bearer bench" "http://127.0.0.1:$port/search?q=$1&max=500"; }
grep_() { (cd "$tmp/ws" && rg --hidden -g '!.git' -n -F -- "$1" . || true); }
# Both sides must find the same lines before they are timed.
theirs=$(grep_ needle_7f3a | wc -l)
ours=$(query needle_7f3a | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["matches"]))')
echo "matches: dynapi $ours, rg $theirs"
[ "$ours" = "$theirs" ] || { echo "the two sides disagree" >&2; exit 1; }

ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for q in needle_7f3a; do
  query "$q" >/dev/null; grep_ "$q" >/dev/null
  d=$(for _ in $(seq "$runs"); do ms query "$q"; done | median)
  r=$(for _ in $(seq "$runs"); do ms grep_ "$q"; done | median)
  echo "query '$q', $runs runs each: dynapi ${d} ms, rg ${r} ms (median)"
  python3 -c "print('ratio rg/dynapi: %.2f (1.00 = as fast as rg; higher is faster)' % ($r / max($d, 1)))"
done
