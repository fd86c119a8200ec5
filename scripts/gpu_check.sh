#!/usr/bin/env bash
# Verify every CUDA path of gpt2bench on a machine with an NVIDIA GPU, in one command:
#
#   bash scripts/gpu_check.sh [REPORT_DIR]        # default: results/gpu_check-<time>
#
# It installs the CUDA extras into .venv-cuda (torch 2.13.0 is PyPI's CUDA 13.0 build: an NVIDIA
# driver >= 580), prints the GPU, runs every `cuda`-marked test and a short CUDA sweep
# (configs/gpu_check.yaml: hf-eager, hf-eager compiled, static-kv with CUDA graphs in fp16 and bf16,
# onnx on the CUDA execution provider, vllm; prompt 128, gen 128, batch 1 and 8) and writes
# REPORT_DIR/report.md. Each step is bounded in time; a broken one is reported at once, loudly, and
# the others still run. Exit code 1 if any step failed. Aimed at < 8 minutes on one H100.
#
#   GPU_CHECK_SKIP_INSTALL=1   use the python of VIRTUAL_ENV (or .venv-cuda) as it is
#   GPU_CHECK_MODEL=PATH       the sweep's model (default: the config's, random 124M)
set -uo pipefail  # no -e: a failed step is recorded and the next one runs
cd "$(dirname "$0")/.."
report="${1:-results/gpu_check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$report"
report="$(cd "$report" && pwd)"
venv="${VIRTUAL_ENV:-$PWD/.venv-cuda}"
py="$venv/bin/python"
failed=()
{
  echo "# gpt2bench GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---:|---|"
} > "$report/report.md"

# step NAME TIMEOUT_S COMMAND...: run it, log it, record it; on failure say so at once and go on.
step() {
  local name="$1" limit="$2"
  shift 2
  local log="$report/$name.log" start result
  start=$(date +%s)
  echo "== $name (at most ${limit} s)"
  if timeout "$limit" "$@" > "$log" 2>&1; then
    result=ok
  else
    result="FAILED (exit $?)"
    failed+=("$name")
    echo "FAILED: $name, exit code in the report; last lines of $log:" >&2
    tail -n 5 "$log" | sed 's/^/    /' >&2
  fi
  echo "| $name | $result | $(( $(date +%s) - start )) | $name.log |" >> "$report/report.md"
}

if [ -z "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
  [ -x "$py" ] || python3 -m venv "$venv"
  step install 900 env VIRTUAL_ENV="$venv" EXTRAS=cuda,dev bash scripts/setup.sh
fi
step gpu 60 "$py" -c "
import subprocess, torch
print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout)
assert torch.cuda.is_available(), 'torch sees no CUDA device (driver >= 580 for CUDA 13.0?)'
print(torch.cuda.get_device_name(0), 'CUDA', torch.version.cuda, 'torch', torch.__version__)"
step ort-cuda-provider 60 "$py" -c "
import onnxruntime as ort
assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()"
step cuda-tests 600 "$py" -m pytest -q -p no:cacheprovider -m cuda -rs tests
# A cuda test skipped on a machine with a GPU is a broken path (a provider or a package missing).
step cuda-tests-ran-all 5 bash -c "! grep SKIPPED '$report/cuda-tests.log'"
config="$report/gpu_check.yaml"
if [ -n "${GPU_CHECK_MODEL:-}" ]; then
  sed "s|^model: .*|model: $GPU_CHECK_MODEL|" configs/gpu_check.yaml > "$config"
else
  cp configs/gpu_check.yaml "$config"
fi
step sweep 900 "$py" -m gpt2bench sweep "$config" --output "$report/sweep"
step plot 120 "$py" -m gpt2bench plot "$report/sweep"
if [ -f "$report/sweep/summary.md" ]; then
  { echo; echo "## The sweep"; echo; sed -n '/^## Headline/,$p' "$report/sweep/summary.md"; } >> "$report/report.md"
fi

if [ ${#failed[@]} -gt 0 ]; then
  { echo; echo "**Failed: ${failed[*]}**"; } >> "$report/report.md"
  echo "GPU check: ${#failed[@]} step(s) failed (${failed[*]}); report: $report/report.md" >&2
  exit 1
fi
echo "GPU check passed; report: $report/report.md"
