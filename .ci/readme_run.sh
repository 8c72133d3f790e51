#!/usr/bin/env bash
# The README's first command, as a newcomer runs it: `python -m galaxy_trio run config/devices.yaml`.
# It runs until Ctrl-C; here we wait until every device is IDLE, press "Ctrl-C" (SIGINT) and expect a clean exit.
set -euo pipefail
log=$(mktemp)
python -m galaxy_trio run config/devices.yaml >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  if grep -q "3 of 3 devices IDLE" "$log"; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if ! grep -q "3 of 3 devices IDLE" "$log"; then
  echo "the fleet did not reach IDLE:"; cat "$log"; kill "$pid" 2>/dev/null || true; exit 1
fi
kill -INT "$pid"
status=0
wait "$pid" || status=$?
if [ "$status" -ne 0 ]; then echo "exit status $status after Ctrl-C:"; cat "$log"; exit 1; fi
if grep -qiE "traceback|exceptiongroup" "$log"; then echo "errors in the log:"; cat "$log"; exit 1; fi
grep -q "idle -> disconnected (manager closed)" "$log"
echo "run config/devices.yaml: 3 devices IDLE, clean shutdown on Ctrl-C"
