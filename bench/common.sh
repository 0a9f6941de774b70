# Shared by the benchmarks (sourced, not run): a release build in $bin (or
# DYNAPI_BIN, a binary built earlier, e.g. of the commit to compare with), a temp
# folder in $tmp removed on exit with every background job, a free port, and a
# wait for a URL to answer, and an OAuth sign-in (`sign_in`).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ -n "${DYNAPI_BIN:-}" ] || cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin="${DYNAPI_BIN:-${CARGO_TARGET_DIR:-$here/target}/release/dynapi}"
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 50); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "$1 never answered" >&2; exit 1; }

json() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# Signs in as an MCP client does on $1 (a base URL), with the owner token
# `bench`: register, approve, redeem the code. $2: the resource to name (the
# base URL when not given). Prints the access token.
sign_in() {
  local base=$1 resource=${2:-$1} cb="http://127.0.0.1:9/cb" client verifier challenge back code
  client=$(curl -fs "$base/oauth/register" -H 'content-type: application/json' \
    -d "{\"redirect_uris\": [\"$cb\"], \"token_endpoint_auth_method\": \"none\"}" | json client_id)
  verifier=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')
  challenge=$(python3 -c 'import base64, hashlib, sys; print(base64.urlsafe_b64encode(hashlib.sha256(sys.argv[1].encode()).digest()).rstrip(b"=").decode())' "$verifier")
  back=$(curl -fs -o /dev/null -w '%{redirect_url}' "$base/oauth/authorize" \
    --data-urlencode response_type=code --data-urlencode client_id="$client" \
    --data-urlencode redirect_uri="$cb" --data-urlencode code_challenge="$challenge" \
    --data-urlencode code_challenge_method=S256 --data-urlencode owner_token=bench \
    --data-urlencode resource="$resource" --data-urlencode grant=read --data-urlencode decision=approve)
  code=$(python3 -c 'import sys, urllib.parse as u; print(dict(u.parse_qsl(u.urlsplit(sys.argv[1]).query))["code"])' "$back")
  curl -fs "$base/oauth/token" --data-urlencode grant_type=authorization_code \
    --data-urlencode code="$code" --data-urlencode redirect_uri="$cb" --data-urlencode resource="$resource" \
    --data-urlencode client_id="$client" --data-urlencode code_verifier="$verifier" | json access_token
}
