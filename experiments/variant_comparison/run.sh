#!/usr/bin/env bash
# Every variant on word_sort with the same budget, one run directory each, then the table.
# usage: bash experiments/variant_comparison/run.sh [outputs/variant_comparison]
set -uo pipefail
out=${1:-outputs/variant_comparison}
variants=(lora lora_fa vera lora_drop dora rslora pissa loraplus delta_lora)
for v in "${variants[@]}"; do
  .venv/bin/loralab-train experiment=variant_comparison variant="$v" hydra.run.dir="$out/$v" \
    || echo "variant $v failed (see $out/$v/summary.json)"
done
.venv/bin/python experiments/variant_comparison/table.py "$out"
