#!/usr/bin/env bash
# Merge the N shards that examples/slurm/shard.sbatch wrote for OUT, after checking that every
# shard finished (its .done marker is there): OUT.shard-I-of-N.jsonl are appended to OUT in shard
# order (and their .errors.jsonl / .skipped.jsonl to OUT's), then removed. Stops with exit 2,
# touching nothing, while any shard is missing or unfinished: rerun that array task, then this.
#
#   bash examples/slurm/merge-shards.sh runs/answers.jsonl 8
set -euo pipefail

OUT=${1:?usage: merge-shards.sh OUT N}
N=${2:?usage: merge-shards.sh OUT N}
base=${OUT%.jsonl}
missing=()
for ((i = 0; i < N; i++)); do
  [ -f "$base.shard-$i-of-$N.done" ] || missing+=("$i")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "merge-shards: $OUT: shard(s) ${missing[*]} of $N not finished (no $base.shard-I-of-$N.done); rerun them first" >&2
  exit 2
fi
# Build each merged file beside its target, check it, then move all of them into place.
merged=()
for suffix in "" .errors .skipped; do
  target="$base$suffix.jsonl"
  [ -n "$suffix" ] || target=$OUT
  parts=()
  for ((i = 0; i < N; i++)); do
    f="$base.shard-$i-of-$N$suffix.jsonl"
    [ -f "$f" ] && parts+=("$f")
  done
  [ ${#parts[@]} -gt 0 ] || continue
  { [ ! -f "$target" ] || cat "$target"; cat "${parts[@]}"; } > "$target.merging"
  merged+=("$target")
done
if [ ! -f "$OUT.merging" ]; then
  echo "merge-shards: $OUT: no shard output found" >&2
  exit 2
fi
lines=$(wc -l < "$OUT.merging")
ids=$(${PYTHON:-python3} -c 'import json,sys; print(len({json.loads(l)["id"] for l in open(sys.argv[1]) if l.strip()}))' "$OUT.merging")
if [ "$lines" -ne "$ids" ]; then
  echo "merge-shards: $OUT: $lines records but $ids distinct ids (merged twice, or shards of different runs?)" >&2
  for t in "${merged[@]}"; do rm -f "$t.merging"; done
  exit 2
fi
for t in "${merged[@]}"; do mv "$t.merging" "$t"; done
for ((i = 0; i < N; i++)); do
  rm -f "$base.shard-$i-of-$N.jsonl" "$base.shard-$i-of-$N.errors.jsonl" "$base.shard-$i-of-$N.skipped.jsonl" \
        "$base.shard-$i-of-$N.done"
done
echo "merge-shards: $OUT: $N shards merged, $lines records" >&2
