#!/usr/bin/env bash
# CI's regression gate: `gpt2bench ab` of the commit under test (this checkout's working tree)
# against the commit it builds on, measured here, interleaved (configs/ab.yaml: the backends whose
# code the project owns). Exit 1 when a comparison's interval lies wholly beyond +5%; the report,
# a markdown table for a PR comment, is printed and kept in $AB_OUTPUT (default: a temporary folder).
#
# The commit it builds on, first that is set of:
#   AB_BASE=<ref>                      the GitHub workflow: the PR's merge base, or the push's "before"
#   results/baselines/ab_base          the first word of its first non-comment line: the commit a
#                                      session started from (record it at a session's start:
#                                      `git rev-parse HEAD > results/baselines/ab_base` and commit)
#   HEAD~1
# A recorded commit that is not an ancestor of HEAD (a rebase) falls back to HEAD~1.
# results/baselines/quick* stay as a published reference (scripts/regression_check.sh), not a gate.
set -euo pipefail
cd "$(dirname "$0")/.."
gpt2bench="${GPT2BENCH:-.venv/bin/gpt2bench}"
base="${AB_BASE:-}"
if [ -z "$base" ] && [ -f results/baselines/ab_base ]; then
  base="$(grep -v '^#' results/baselines/ab_base | awk 'NF {print $1; exit}')"
  if ! git merge-base --is-ancestor "$base" HEAD 2>/dev/null; then
    echo "ab gate: results/baselines/ab_base ($base) is not an ancestor of HEAD; using HEAD~1" >&2
    base=""
  fi
fi
base="${base:-HEAD~1}"
if ! git rev-parse --verify -q "$base^{commit}" >/dev/null; then
  echo "ab gate: no commit '$base' in this clone (a shallow clone? fetch the history)" >&2
  exit 1
fi
if [ "$(git rev-parse "$base^{commit}")" = "$(git rev-parse HEAD)" ] && [ -z "$(git status --porcelain --untracked-files=no)" ]; then
  echo "ab gate: $base is HEAD itself; nothing to compare"
  exit 0
fi
out="${AB_OUTPUT:-$(mktemp -d)/ab}"
echo "ab gate: $(git rev-parse --short HEAD) against $base ($(git rev-parse --short "$base^{commit}"))"
"$gpt2bench" ab "$base" --config configs/ab.yaml --output "$out"
