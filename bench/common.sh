# Shared by the benchmarks (sourced, not run): a release build in $bin (or
# DYNAPI_BIN, a binary built earlier, e.g. of the commit to compare with), a temp
# folder in $tmp removed on exit with every background job, a free port, and a
# wait for a URL to answer.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ -n "${DYNAPI_BIN:-}" ] || cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin="${DYNAPI_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/dynapi}"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 50); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "$1 never answered" >&2; exit 1; }
