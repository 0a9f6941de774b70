#!/bin/sh
# Runs one SQL statement against data/app.db, read-only, and prints the rows as
# JSON. Usage: run_sql.sh "SELECT ..."
# Writing takes a token with `sql-write` and POST /sql; this endpoint needs only
# `run`, so it must not write: the file is opened read-only (which SQL cannot
# undo), and ATTACH (which would create files) and PRAGMA are refused.
set -eu
exec python3 -c '
import json, sqlite3, sys
db = sqlite3.connect("file:data/app.db?mode=ro", uri=True)
refused = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA}
db.set_authorizer(lambda action, *rest: sqlite3.SQLITE_DENY if action in refused else sqlite3.SQLITE_OK)
try:
    cur = db.execute(sys.argv[1])
except sqlite3.Error as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(1)
cols = [d[0] for d in cur.description or []]
rows = [list(r) for r in cur.fetchmany(1000)]
print(json.dumps({"columns": cols, "rows": rows, "row_count": len(rows)}))
' "$1"
