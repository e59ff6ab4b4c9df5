#!/usr/bin/env bash
# Run every scripts/bench_*.py in turn (through `uv run`, so a fresh clone works), print each
# one's output, then a summary line. Exit 1 if any benchmark exited non-zero (a MISS or a crash).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
shopt -s nullglob
benchmarks=(scripts/bench_*.py)
if [ ${#benchmarks[@]} -eq 0 ]; then
    echo "bench_all: no scripts/bench_*.py found"
    exit 1
fi

failed=()
for bench in "${benchmarks[@]}"; do
    name=$(basename "$bench" .py)
    echo "=== $name ==="
    started=$SECONDS
    uv run python "$bench"
    code=$?
    echo "=== $name: exit $code after $((SECONDS - started)) s ==="
    echo
    if [ "$code" -ne 0 ]; then
        failed+=("$name (exit $code)")
    fi
done

if [ ${#failed[@]} -eq 0 ]; then
    echo "bench_all: OK: ${#benchmarks[@]} benchmarks, all targets met"
    exit 0
fi
echo "bench_all: MISS: ${#failed[@]} of ${#benchmarks[@]} benchmarks failed: ${failed[*]}"
exit 1
