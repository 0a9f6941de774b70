#!/bin/sh
# Runs one SQL statement against data/app.db and prints the rows as JSON.
# Usage: run_sql.sh "SELECT ..."
set -eu
mkdir -p data
exec python3 -c '
import json, sqlite3, sys
db = sqlite3.connect("data/app.db")
cur = db.execute(sys.argv[1])
cols = [d[0] for d in cur.description or []]
rows = [list(r) for r in cur.fetchmany(1000)]
db.commit()
print(json.dumps({"columns": cols, "rows": rows, "row_count": len(rows)}))
' "$1"
