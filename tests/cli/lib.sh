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
