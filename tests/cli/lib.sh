# Shared by the CLI end-to-end tests (source it first): strict mode, $grpo (the binary under
# test, the script's first argument), $src (the repository root), a $work directory removed on
# exit, fail MESSAGE, and expect_error EXIT TEXT COMMAND... (the command must exit with EXIT and
# print TEXT).
set -euo pipefail
grpo=$1
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_error() {
  local code=$1 text=$2; shift 2
  set +e; out=$("$@" 2>&1); got=$?; set -e
  [ "$got" = "$code" ] || fail "exit $got (want $code) from: $* -> $out"
  # A here-string, not echo | grep: under pipefail grep -q exiting at its first match can kill
  # echo with SIGPIPE and fail the check.
  grep -qF -- "$text" <<<"$out" || fail "message '$out' lacks '$text'"
}
# listening_port PID OUT ERR [SECONDS]: waits (default 30 s) for the server PID, whose stdout goes
# to OUT and stderr to ERR, to print "listening on 127.0.0.1:PORT" and prints PORT; fails the test
# if the server exits first (showing ERR) or never says so.
listening_port() {
  local pid=$1 out=$2 err=$3 tries=$((${4:-30} * 10)) port=""
  for _ in $(seq 1 "$tries"); do
    # The background shell may not have created the file yet: no file, no port (yet).
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]\+\)$/\1/p' "$out" 2>/dev/null | head -n 1)
    [ -n "$port" ] && { echo "$port"; return 0; }
    kill -0 "$pid" 2>/dev/null || fail "server exited before listening: $(cat "$err")"
    sleep 0.1
  done
  fail "server did not print 'listening on 127.0.0.1:PORT'"
}
