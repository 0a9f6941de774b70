#!/bin/sh
# Lines per file extension under a folder: count_lines.sh DIR LIMIT
set -eu
dir=${1:-.}
limit=${2:-100}
find "./$dir" -path '*/.git' -prune -o -type f -print0 \
  | xargs -0 -r wc -l 2>/dev/null \
  | awk '$2 != "total" { n = split($2, parts, "."); ext = (n > 1 && parts[n] !~ /\//) ? parts[n] : "(none)"; lines[ext] += $1 }
         END { for (e in lines) printf "%d\t%s\n", lines[e], e }' \
  | sort -rn | head -n "$limit"
