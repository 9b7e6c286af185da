# shellcheck shell=bash
# Helpers shared by scripts/up and scripts/down; sourced, not executed.
#
#   LIFELINE_RUN_DIR  where pid files and logs go (default .run/ in the
#                     checkout); two stacks on one machine need two
#   LIFELINE_BIN_DIR  where the service binaries are (default
#                     target/release/, which scripts/up builds); when set,
#                     scripts/up runs the binaries found there and builds
#                     nothing

LIFELINE_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=$(realpath -m -- "${LIFELINE_RUN_DIR:-$LIFELINE_ROOT/.run}")
# shellcheck disable=SC2034 # used by the scripts that source this file
# In start order: the consumers first, so that nothing waits on them.
SERVICES=(evaluator notifier ingest api)

# The binary of service $1.
bin_path() { printf '%s/lifeline-%s\n' "${LIFELINE_BIN_DIR:-$LIFELINE_ROOT/target/release}" "$1"; }

# The first word of process $1's command line, or nothing (and status 1) if
# there is no such process or it has exited (a zombie's is empty).
arg0_of() {
  local arg0
  kill -0 "$1" 2>/dev/null || return 1
  [[ -d /proc/$1 ]] || return 1
  IFS= read -r -d '' arg0 <"/proc/$1/cmdline" 2>/dev/null || return 1
  [[ -n $arg0 ]] || return 1
  printf '%s\n' "$arg0"
}

# What became of process $2, started for service $1 a moment ago:
#   ours      it runs the service's binary;
#   starting  it is alive but still the shell or `nohup` that is about to
#             exec the binary (a process started with `&` is not the
#             binary yet when `$!` is known: its command line says so);
#   gone      it has exited.
start_state() {
  local arg0
  if ! arg0=$(arg0_of "$2"); then
    printf 'gone\n'
  elif [[ ${arg0##*/} == "lifeline-$1" ]]; then
    printf 'ours\n'
  else
    printf 'starting\n'
  fi
}

# Prints the pid in $RUN_DIR/$1.pid if that process is alive and is the
# service's binary (a recycled pid or a zombie does not count).
running_pid() {
  local pidf=$RUN_DIR/$1.pid pid arg0
  [[ -f $pidf ]] || return 1
  read -r pid <"$pidf" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  arg0=$(arg0_of "$pid") || return 1
  [[ ${arg0##*/} == "lifeline-$1" ]] || return 1
  printf '%s\n' "$pid"
}

# --- Lifeline's own Redis ---------------------------------------------------
# When the Redis scripts/up finds keeps nothing on disk, it runs one of its
# own with an append-only file in $RUN_DIR/redis/, on OWN_REDIS_PORT.

OWN_REDIS_PORT=${UP_OWN_REDIS_PORT:-6380}
OWN_REDIS_DIR=$RUN_DIR/redis

# redis-cli against Lifeline's own Redis.
own_redis_cli() { redis-cli -h 127.0.0.1 -p "$OWN_REDIS_PORT" "$@"; }

# True if a Redis answers on OWN_REDIS_PORT with its data in OWN_REDIS_DIR
# (so it is the one scripts/up started, not someone else's).
own_redis_running() {
  local dir
  dir=$(timeout 3 redis-cli -h 127.0.0.1 -p "$OWN_REDIS_PORT" config get dir 2>/dev/null | sed -n 2p) || return 1
  [[ -n $dir && $(cd -- "$dir" 2>/dev/null && pwd -P) == $(cd -- "$OWN_REDIS_DIR" 2>/dev/null && pwd -P) ]]
}
