#!/usr/bin/env bash
# Scale benchmark of docs/BENCHMARKS.md: peak RSS and wall time of `plan` (offline) and of a
# sandbox run for a large sheet. Needs GNU time (/usr/bin/time -v).
#   scripts/bench-scale.sh [ROWS]        (default 1000000)
set -euo pipefail
rows=${1:-1000000}
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/license-batch
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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
measure() {
  local label=$1; shift
  /usr/bin/time -v "$@" > "$work/out.txt" 2> "$work/time.txt" || true
  local rss wall
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f MiB", $2/1024}' "$work/time.txt")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
  echo "| $label | $rows | $wall | $rss |"
}
echo "| what | rows | wall time | peak RSS |"
echo "|---|---|---|---|"
(cd "$work" && measure "plan (offline)" "$bin" plan sheet.csv -q)
if [ "${RUN:-1}" = 1 ]; then
  (cd "$work" && measure "run --sandbox" "$bin" run sheet.csv --sandbox -q --no-insights --requests-per-minute 100000000 --concurrency 32)
fi
