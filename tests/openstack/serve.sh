#!/bin/bash
# serve.sh PARENT_PID COMMAND...: run COMMAND (a gunicorn server) until it exits or
# PARENT_PID (the test process) is gone, then stop it (SIGINT, then SIGKILL). The tests run
# this as the leader of its own process group and stop it by that group's id.
set -uo pipefail
parent="$1"
shift
"$@" &
child=$!
stop() {
  kill -INT "$child" 2>/dev/null
  for _ in $(seq 1 40); do
    kill -0 "$child" 2>/dev/null || exit 0
    sleep 0.25
  done
  kill -KILL "$child" 2>/dev/null
  exit 0
}
trap stop INT TERM
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do
  sleep 0.5
done
stop
