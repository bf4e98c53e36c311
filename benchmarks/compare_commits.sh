#!/usr/bin/env bash
# Run one benchmark script from two commits, interleaved round by round, on the same machine.
#
#   bash benchmarks/compare_commits.sh OLD_REV NEW_REV ROUNDS bench_operators.py --quick
#
# Each commit is checked out once into a temporary worktree; each round runs the old
# commit's script, then the new one's (each with its own package on sys.path), so a slow
# spell of a shared machine hits both. The tables of every round are printed, labelled, for
# the ratios to be compared (the scripts report ratios to physical limits in their own run).
set -euo pipefail
old=$1 new=$2 rounds=$3 script=$4
shift 4
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/old" >/dev/null 2>&1 || true;
      git -C "$root" worktree remove --force "$tmp/new" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$root" worktree add -q --detach "$tmp/old" "$old"
git -C "$root" worktree add -q --detach "$tmp/new" "$new"
for ((r = 1; r <= rounds; r++)); do
  for side in old new; do
    echo "=== round $r, $side ($(git -C "$tmp/$side" rev-parse --short HEAD)) ==="
    (cd "$tmp/$side" && PYTHONPATH="$tmp/$side" OMP_NUM_THREADS=1 python "benchmarks/$script" "$@")
  done
done
