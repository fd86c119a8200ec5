#!/usr/bin/env bash
# Record the CI regression baseline again, deliberately: run this on an otherwise idle machine,
# look at the numbers, and commit results/baselines/quick/ with a note on why it changed.
set -euo pipefail
cd "$(dirname "$0")/.."
gpt2bench="${GPT2BENCH:-.venv/bin/gpt2bench}"
rm -rf results/baselines/quick
"$gpt2bench" sweep configs/quick.yaml --output results/baselines/quick
"$gpt2bench" plot results/baselines/quick >/dev/null
echo "new baseline in results/baselines/quick: review summary.md, then commit it"
