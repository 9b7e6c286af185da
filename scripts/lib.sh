# shellcheck shell=bash
# Helpers shared by scripts/up and scripts/down; sourced, not executed.

LIFELINE_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=$LIFELINE_ROOT/.run
# shellcheck disable=SC2034 # used by the scripts that source this file
# In start order: the consumers first, so that nothing waits on them.
SERVICES=(evaluator notifier ingest api)

# The release binary of service $1.
bin_path() { printf '%s/target/release/lifeline-%s\n' "$LIFELINE_ROOT" "$1"; }

# Prints the pid in .run/$1.pid if that process is alive and is the
# service's binary (a recycled pid or a zombie does not count).
running_pid() {
  local pidf=$RUN_DIR/$1.pid pid arg0
  [[ -f $pidf ]] || return 1
  read -r pid <"$pidf" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -d /proc/$pid ]]; then
    IFS= read -r -d '' arg0 <"/proc/$pid/cmdline" 2>/dev/null || return 1
    [[ ${arg0##*/} == "lifeline-$1" ]] || return 1
  fi
  printf '%s\n' "$pid"
}
