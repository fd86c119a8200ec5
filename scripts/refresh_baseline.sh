#!/usr/bin/env bash
# Record the CI regression baseline of this machine's CPU again, deliberately: run this on an
# otherwise idle machine, look at the numbers, and commit results/baselines/quick-<fingerprint>/
# with a note on why it changed. `--default` records results/baselines/quick, the fallback for CPUs
# without a baseline of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
gpt2bench="${GPT2BENCH:-.venv/bin/gpt2bench}"
python="$(dirname "$gpt2bench")/python"
if [ "${1:-}" = --default ]; then
  out=results/baselines/quick
else
  out="results/baselines/quick-$("$python" -c 'from gpt2bench.machine.sysinfo import cpu_fingerprint; print(cpu_fingerprint())')"
fi
rm -rf "$out"
"$gpt2bench" sweep configs/quick.yaml --output "$out"
"$gpt2bench" plot "$out" >/dev/null
echo "new baseline in $out: review summary.md, then commit it"
