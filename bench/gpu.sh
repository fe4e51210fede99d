#!/usr/bin/env bash
# biofleet's face model on one device: the network (fp32 / fp16 / bf16, model-only and through
# Embedder.embed), cudnn.benchmark, agreement with the CPU and dlib on real chips, the CNN
# detector and the whole pipeline. The runner is bench/gpu/run.py (bench/README.md); the models,
# chips and photos come from bench/gpu-bundle/ (make gpu-bundle).
#
#   bench/gpu.sh --device cuda --budget-s 360      # on the GPU host: writes $OUT/gpu-<gpu>.json
#   bench/gpu.sh --device cpu --quick              # a reduced run here
#
# Needs Python 3.10+, torch, numpy and Pillow (rich, torchvision optional); no network.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" -m bench.gpu.run "$@"
