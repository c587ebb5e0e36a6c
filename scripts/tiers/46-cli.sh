#!/usr/bin/env bash
# The `starling` command-line client against a real `starling-dev` (debug builds, free loopback
# ports, a fresh data directory): every verb in table and JSON output, the failures (unknown
# namespace, bad token, revoked jti, usage errors, unreachable API) with their exit codes, the
# saved login (mode 0600, token never printed), and tokens it issues: one connects with
# mosquitto_pub over mqtts trusting the dev CA, and once revoked it is refused. Then the same
# client against `starling-api serve` on the tier's real Postgres ($DATABASE_URL, from
# scripts/test): the verbs again through the other store.
source "$(dirname "$0")/../lib/tier.sh"
[ -n "${DATABASE_URL:-}" ] || { echo "DATABASE_URL is not set (scripts/test starts a Postgres)"; exit 1; }
need mosquitto_pub jq python3 psql curl
cargo build -q -p starling-dev --bin starling-dev -p starling-cli --bin starling -p starling-api --bin starling-api
target_dir=$(target_dir)
dev_bin="$target_dir/debug/starling-dev"
cli_bin="$target_dir/debug/starling"
api_bin="$target_dir/debug/starling-api"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
work=$(mktemp -d)
api_port=$(port); mqtts_port=$(port)
"$dev_bin" --data-dir "$work/data" --api-addr "127.0.0.1:$api_port" --internal-addr "127.0.0.1:$(port)" \
  --mqtt "127.0.0.1:$(port)" --ws "127.0.0.1:$(port)" --mqtts "127.0.0.1:$mqtts_port" \
  --wss "127.0.0.1:$(port)" --broker-http "127.0.0.1:$(port)" >"$work/dev.out" 2>&1 &
dev_pid=$!
api_pid=
cleanup() {
  kill "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true
  if [ -n "$api_pid" ]; then kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
deadline=$((SECONDS + 120))
until grep -q '^More tokens:' "$work/dev.out" 2>/dev/null; do
  if ! kill -0 "$dev_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    echo "starling-dev did not start:"; cat "$work/dev.out"; exit 1
  fi
  sleep 0.2
done

# The login line dev prints, as printed.
login_line=$(grep -m1 '^ *starling login ' "$work/dev.out" | sed 's/^ *//')
[ -n "$login_line" ] || { echo "starling-dev printed no 'starling login' line"; cat "$work/dev.out"; exit 1; }
admin=$(sed -n 's/^ *admin token *//p' "$work/dev.out")
ca=$(sed -n 's/^ *CA *//p' "$work/dev.out")
api="http://127.0.0.1:$api_port"

export STARLING_CONFIG_DIR="$work/config"
unset STARLING_API_URL STARLING_API_TOKEN
failures=0
checks=0
# run <expected exit> <command...>: output in $out (stdout+stderr), fails the tier on a wrong code.
run() {
  local want=$1; shift
  set +e
  out=$(timeout 60 "$@" 2>&1)
  code=$?
  set -e
  checks=$((checks + 1))
  if [ "$code" -ne "$want" ]; then
    echo "FAIL: '$*' exited $code, wanted $want:"; echo "$out"; failures=$((failures + 1))
  fi
}
# has <text> <what>: $out contains text.
has() {
  checks=$((checks + 1))
  if ! grep -qF -- "$1" <<<"$out"; then
    echo "FAIL: $2: no '$1' in:"; echo "$out"; failures=$((failures + 1))
  fi
}
hasnt() {
  checks=$((checks + 1))
  if grep -qF -- "$1" <<<"$out"; then
    echo "FAIL: $2: '$1' should not be in:"; echo "$out"; failures=$((failures + 1))
  fi
}
# is <jq filter> <expected>: the JSON in $out.
is() {
  local got
  got=$(jq -r "$1" <<<"$out" 2>&1) || true
  checks=$((checks + 1))
  if [ "$got" != "$2" ]; then
    echo "FAIL: $1 is '$got', wanted '$2' in:"; echo "$out"; failures=$((failures + 1))
  fi
}


# --- usage errors (2), before any login
run 2 "$cli_bin"; has "Usage:" "no command"
run 2 "$cli_bin" namespace frobnicate; has "unrecognized subcommand" "unknown verb"
run 2 "$cli_bin" whoami; has "no API URL" "no login"
run 2 "$cli_bin" broker issue demo -n demo --number 0; has "--number" "number range"
run 2 "$cli_bin" broker issue demo -n demo --topic-acl '#' --pub a; has "cannot be used with" "acl conflict"
run 2 "$cli_bin" --url ftp://x --token t whoami; has "http:// or https://" "bad URL scheme"
run 0 "$cli_bin" --help; has "Exit codes:" "help lists exit codes"; has "STARLING_API_TOKEN" "help names the env"
for sub in "namespace create" "namespace list" "broker create" "broker issue" "broker revoke" "broker update" "broker public-keys" "broker rotate-keys" "tokens create" "login" "whoami" "completion"; do
  # shellcheck disable=SC2086
  run 0 "$cli_bin" $sub --help; has "Examples:" "$sub --help has examples"
done
for sh in bash zsh fish; do run 0 "$cli_bin" completion "$sh"; has "starling" "$sh completion"; done

# --- network error (3)
run 3 "$cli_bin" --url "http://127.0.0.1:$(port)" --token x whoami; has "cannot reach the API" "unreachable"

# --- login (the line dev printed), whoami
run 1 "$cli_bin" login --url "$api" --token sat_wrong; has "code 10000" "bad token at login"
[ ! -e "$STARLING_CONFIG_DIR/login.json" ] || { echo "FAIL: a refused login was saved"; failures=$((failures + 1)); }
eval "run 0 $cli_bin ${login_line#starling }"
has "logged in to $api" "login"; hasnt "$admin" "login prints no token"
mode=$(stat -c %a "$STARLING_CONFIG_DIR/login.json")
[ "$mode" = 600 ] || { echo "FAIL: login.json mode $mode"; failures=$((failures + 1)); }
run 0 "$cli_bin" whoami; has "admin" "whoami role"; hasnt "$admin" "whoami prints no token"
run 0 "$cli_bin" whoami -o json; is .token.role admin
# the environment wins over the saved login
STARLING_API_TOKEN=sat_wrong run 1 "$cli_bin" whoami; has "HTTP 401" "env token wins"; has "code 10000" "code printed"

# --- namespaces
run 0 "$cli_bin" namespace create cli-ns --description "made by the cli"; has "cli-ns" "namespace create table"; has "NAME" "table header"
run 1 "$cli_bin" namespace create cli-ns; has "HTTP 409" "name taken"
run 0 "$cli_bin" namespace list; has "cli-ns" "namespace list"; has "demo" "namespace list has demo"
run 0 "$cli_bin" namespace list -o json; is '[.[] | select(.name=="cli-ns") | .description] | .[0]' "made by the cli"
run 0 "$cli_bin" namespace describe cli-ns -o json; is .name cli-ns
run 1 "$cli_bin" namespace describe no-such-ns; has "HTTP 404" "unknown namespace"; has "code 10004" "not found code"

# --- brokers
run 0 "$cli_bin" broker create b1 -n cli-ns --expiration 3600; has "b1" "broker create"; has "broker secret" "secret shown once"
run 0 "$cli_bin" broker create b2 -n cli-ns -o json; is .name b2; is '.secret | startswith("sbs_")' true
run 1 "$cli_bin" broker create b1 -n no-such-ns; has "HTTP 404" "broker in unknown namespace"
run 0 "$cli_bin" broker list -n cli-ns; has "b1" "broker list"; has "b2" "broker list b2"
run 0 "$cli_bin" broker list -n cli-ns -o json; is 'length' 2
run 0 "$cli_bin" broker describe b1 -n cli-ns -o json; is .expiration 3600
run 0 "$cli_bin" broker update b1 -n cli-ns --expiration 600 --description changed -o json; is .expiration 600; is .description changed
run 0 "$cli_bin" broker update b1 -n cli-ns --expiration -1 -o json; is .expiration null
run 2 "$cli_bin" broker update b1 -n cli-ns; has "nothing to change" "empty update"
run 1 "$cli_bin" broker update b1 -n cli-ns --expiration 0; has "HTTP 400" "bad expiration"; has "code 10001" "invalid code"
run 0 "$cli_bin" broker delete b2 -n cli-ns; has "deleted broker b2" "broker delete"
run 1 "$cli_bin" broker describe b2 -n cli-ns; has "HTTP 404" "deleted broker is gone"

# --- keys
run 0 "$cli_bin" broker public-keys demo -n demo -o json; is '.keys | length > 0' true
run 0 "$cli_bin" broker public-keys demo -n demo; has "EdDSA" "public-keys table"
run 0 "$cli_bin" broker rotate-keys b1 -n cli-ns -o json; is '.currentKid | length > 0' true
run 0 "$cli_bin" broker rotate-keys b1 -n cli-ns; has "RETIRE AT" "rotate-keys table"

# --- tokens for clients, mosquitto_pub, revocation
run 0 "$cli_bin" broker issue demo -n demo --client-id cli-a --client-id cli-b --pub 'demo/#' --expiration 600 -o json
is 'keys | join(",")' "cli-a,cli-b"
tok_a=$(jq -r '."cli-a"' <<<"$out")
run 0 "$cli_bin" broker issue demo -n demo --number 3; has "JTI" "issue table"
[ "$(grep -c '\.' <<<"$out")" -ge 3 ] || { echo "FAIL: three tokens wanted:"; echo "$out"; failures=$((failures + 1)); }
run 1 "$cli_bin" broker issue demo -n demo --topic-acl 'a/b'; has "topicAcl" "bad acl message"
run 1 "$cli_bin" broker issue nope -n demo; has "HTTP 404" "issue on unknown broker"
jti_a=$(python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p+"="*(-len(p)%4)))["jti"])' "$tok_a")
pub() { timeout 30 mosquitto_pub -h localhost -p "$mqtts_port" --cafile "$ca" -V 5 -i "$1" -u x -P "$2" -t demo/cli -m hello; }
checks=$((checks + 1))
pub cli-a "$tok_a" || { echo "FAIL: the issued token does not connect"; failures=$((failures + 1)); }
run 0 "$cli_bin" broker revoke demo -n demo "$jti_a"; has "revoked $jti_a" "revoke"
run 0 "$cli_bin" broker show-revocations demo -n demo -o json; is "[.[] | select(.jti==\"$jti_a\")] | length" 1
run 0 "$cli_bin" broker show-revocations demo -n demo; has "$jti_a" "revocations table"
# the broker learns of the revocation through its state feed: wait until it refuses the token
refused=false
deadline=$((SECONDS + 30))
while [ $SECONDS -lt $deadline ]; do
  if ! pub cli-a "$tok_a" 2>/dev/null; then refused=true; break; fi
  sleep 0.2
done
checks=$((checks + 1))
$refused || { echo "FAIL: a revoked token still connects"; failures=$((failures + 1)); }
run 0 "$cli_bin" broker unrevoke demo -n demo "$jti_a"; has "lifted" "unrevoke"
run 0 "$cli_bin" broker show-revocations demo -n demo -o json; is "[.[] | select(.jti==\"$jti_a\")] | length" 0
run 2 "$cli_bin" broker revoke demo -n demo; has "required" "revoke without jti"

# --- API tokens
run 0 "$cli_bin" tokens create reader --role read -o json; is .role read
reader=$(jq -r .token <<<"$out"); reader_id=$(jq -r .id <<<"$out")
run 0 "$cli_bin" tokens list; has "reader" "tokens list"; hasnt "$reader" "tokens list shows no secret"
run 0 "$cli_bin" tokens list -o json; is "[.[] | select(.id==\"$reader_id\") | .role] | .[0]" read
STARLING_API_TOKEN="$reader" run 1 "$cli_bin" namespace create by-reader; has "HTTP 403" "read role cannot write"; has "code 10003" "role code"
STARLING_API_TOKEN="$reader" run 0 "$cli_bin" namespace list -o json; is 'length > 0' true
run 2 "$cli_bin" tokens create x --role owner; has "invalid value" "bad role"
run 0 "$cli_bin" tokens delete "$reader_id"; has "deleted API token" "tokens delete"
STARLING_API_TOKEN="$reader" run 1 "$cli_bin" whoami; has "HTTP 401" "a deleted token fails"

# --- cleanup verbs
run 0 "$cli_bin" broker delete b1 -n cli-ns
run 1 "$cli_bin" namespace delete demo; has "HTTP 409" "non-empty namespace"
run 0 "$cli_bin" namespace delete cli-ns -o json; is .ok true
run 0 "$cli_bin" logout; has "removed the login" "logout"
run 2 "$cli_bin" whoami; has "no API URL" "logged out"

# --- the same client against starling-api on Postgres
db="starling_cli_tier_$$"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
base="${DATABASE_URL%%\?*}"
pg_port=$(port)
python3 -c 'import secrets; print(secrets.token_hex(32), end="")' >"$work/kek"
chmod 600 "$work/kek"
bootstrap="sat_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
STARLING_API__KEK_FILE="$work/kek" STARLING_API__BOOTSTRAP_TOKEN="$bootstrap" RUST_LOG=warn \
  "$api_bin" serve --database-url "${base%/*}/$db" \
  --public-addr "127.0.0.1:$pg_port" --internal-addr "127.0.0.1:$(port)" >"$work/api.log" 2>&1 &
api_pid=$!
deadline=$((SECONDS + 60))
until curl -fsS "http://127.0.0.1:$pg_port/readyz" >/dev/null 2>&1; do
  if ! kill -0 "$api_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    echo "starling-api did not start:"; cat "$work/api.log"; exit 1
  fi
  sleep 0.1
done
export STARLING_API_URL="http://127.0.0.1:$pg_port" STARLING_API_TOKEN="$bootstrap"
run 0 "$cli_bin" whoami -o json; is .token.bootstrap true
run 0 "$cli_bin" namespace create pg-ns -o json; is .name pg-ns
run 1 "$cli_bin" namespace describe no-such-ns; has "code 10004" "postgres: unknown namespace"
run 0 "$cli_bin" broker create pb -n pg-ns --expiration 60 -o json; is .expiration 60
run 0 "$cli_bin" broker update pb -n pg-ns --description on-postgres -o json; is .description on-postgres
run 0 "$cli_bin" broker list -n pg-ns; has "pb" "postgres: broker list"
run 0 "$cli_bin" broker issue pb -n pg-ns --client-id d1 -o json; is 'keys[0]' d1
jti=$(python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p+"="*(-len(p)%4)))["jti"])' "$(jq -r .d1 <<<"$out")")
run 0 "$cli_bin" broker revoke pb -n pg-ns "$jti"
run 0 "$cli_bin" broker show-revocations pb -n pg-ns -o json; is '.[0].jti' "$jti"
run 0 "$cli_bin" broker unrevoke pb -n pg-ns "$jti"
run 0 "$cli_bin" broker public-keys pb -n pg-ns -o json; is '.keys | length > 0' true
run 0 "$cli_bin" broker rotate-keys pb -n pg-ns -o json; is '.nextKid | length > 0' true
run 0 "$cli_bin" tokens create pg-writer --role write -o json; is .role write
run 0 "$cli_bin" tokens list -o json; is '[.[] | select(.name=="pg-writer")] | length' 1
STARLING_API_TOKEN=sat_wrong run 1 "$cli_bin" whoami; has "HTTP 401" "postgres: bad token"
run 0 "$cli_bin" broker delete pb -n pg-ns
run 0 "$cli_bin" namespace delete pg-ns
kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; api_pid=
psql -q "$DATABASE_URL" -c "DROP DATABASE $db" >/dev/null || true

echo "cli: $checks checks, $failures failed"
[ "$failures" -eq 0 ]
