#!/usr/bin/env bash
# Scale benchmark of docs/BENCHMARKS.md: peak RSS and wall time of `plan` (offline) and of a
# run for a large sheet against `license-batch sandbox` in its own process (the client alone
# is measured; the simulator keeps every request it was sent). Needs GNU time (/usr/bin/time -v).
#   scripts/bench-scale.sh [ROWS]                 (default 1000000)
#   RUN=0 scripts/bench-scale.sh [ROWS]           plan only
#   INPROCESS=1 scripts/bench-scale.sh [ROWS]     also `run --sandbox` (simulator in the same
#                                                 process: its memory is counted too)
#   WORKBOOK=1 scripts/bench-scale.sh [ROWS]      the same sheet as an .xlsx workbook too: its
#                                                 `plan`, and a run writing the report workbook
set -euo pipefail
rows=${1:-1000000}
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/license-batch
work=$(mktemp -d)
sandbox_pid=
trap '[ -n "$sandbox_pid" ] && kill "$sandbox_pid" 2>/dev/null; rm -rf "$work"' EXIT
python3 - "$rows" "$work/sheet.csv" <<'PY'
import sys
rows, path = int(sys.argv[1]), sys.argv[2]
customers = ["%08x-0000-4000-8000-%012x" % (c, c) for c in range(1, 101)]
with open(path, "w") as f:
    f.write("customer_id,user_id,sku,ticket\n")
    for i in range(rows):
        f.write(f"{customers[i % 100]},user{i}@contoso.com,SPB,T-{i}\n")
PY
echo "sheet: $rows rows, $(du -h "$work/sheet.csv" | cut -f1)"
if [ "${WORKBOOK:-0}" = 1 ]; then
  cargo run --release -q --example sample_workbook -- "$work/sheet.csv" "$work/sheet.xlsx"
  echo "workbook: $(du -h "$work/sheet.xlsx" | cut -f1)"
fi
measure() {
  local label=$1; shift
  local status=0
  /usr/bin/time -v "$@" > "$work/out.txt" 2> "$work/time.txt" || status=$?
  local rss wall
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MiB", $2/1024}' "$work/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
  echo "| $label | $rows | $wall | $rss | $status |"
}
echo "| what | rows | wall time | peak RSS | exit |"
echo "|---|---|---|---|---|"
(cd "$work" && measure "plan (offline)" "$bin" plan sheet.csv -q)
if [ "${WORKBOOK:-0}" = 1 ]; then
  (cd "$work" && measure "plan (offline) of the workbook" "$bin" plan sheet.xlsx -q)
fi
fast=(-q --no-insights --requests-per-minute 100000000 --concurrency 32)
if [ "${RUN:-1}" = 1 ]; then
  "$bin" sandbox --listen 127.0.0.1:0 > "$work/sandbox.txt" &
  sandbox_pid=$!
  for _ in $(seq 100); do grep -q 'export' "$work/sandbox.txt" 2>/dev/null && break; sleep 0.1; done
  eval "$(sed -n 's/^ *export /export /p' "$work/sandbox.txt")"
  (cd "$work" && measure "run against license-batch sandbox (client only)" "$bin" run sheet.csv --state client.sqlite "${fast[@]}")
  if [ "${WORKBOOK:-0}" = 1 ]; then
    (cd "$work" && measure "run of the workbook against license-batch sandbox (client only; report workbook)" "$bin" run sheet.xlsx --state book.sqlite "${fast[@]}")
  fi
  kill "$sandbox_pid"; wait "$sandbox_pid" 2>/dev/null || true; sandbox_pid=
fi
if [ "${INPROCESS:-0}" = 1 ]; then
  (cd "$work" && measure "run --sandbox" "$bin" run sheet.csv --sandbox "${fast[@]}")
fi
