#!/usr/bin/env bash
# Issue 14's GPU check, prepared as one short command for a lent GPU machine (the `device` tool), where
# python3 already holds torch with CUDA, transformers and peft (the side networks need nothing else):
#
#     run(command="bash benchmarks/device_check.sh", timeout_s=540)
#
# It prints the GPU and library versions, then times CROSSAN against IISAN at M = 2 and 4 at
# MicroLens-100K's size with the project's trainer step (benchmarks/side_network_epoch.py: random fp16
# cache of the paper's shape on the GPU, batch 64, 1,563 steps per epoch extrapolated from the steps run; each
# model in a process of its own after 200 warm-up steps, eight processes in all),
# under `precision=auto` (bf16 autocast on a GPU with bf16 units) and fp32, two rounds each, the fastest
# kept. Peak memory is torch.cuda.max_memory_allocated over the timed steps (the benchmark's docstring).
# Target (issue 14): CROSSAN M = 4 <= 10 s/epoch on one H200.
# Then (under a minute) benchmarks/step_syncs.py lists, per source line, where CROSSAN's and IISAN's steps
# wait for the GPU (torch.cuda.set_sync_debug_mode): expected per step, only the batch's `unique` (recommender
# embed_unique), whether padding is among its items, and the loss's valid positions (none was measured yet).
#
# Writes results.json, results.csv, step_syncs.json and device_check.log under $OUT (the device tool's folder
# that comes back), or under bench_out/device_check when OUT is unset. Settings through the environment:
#   DEVICE (default cuda), STEPS (200 steps per round), ROUNDS (2), PRECISION (auto,fp32), PYTHON (python3),
#   EXTRA (more arguments for side_network_epoch.py, e.g. "--users 4000 --items 2000" for a smoke run).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench_out/device_check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    git log --oneline -1 2>/dev/null || true
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    "$py" -c "import torch, transformers, peft; print('torch', torch.__version__, '| cuda', torch.version.cuda,
'| transformers', transformers.__version__, '| peft', peft.__version__, '| GPU', torch.cuda.is_available()
and torch.cuda.get_device_name(0))"
    # shellcheck disable=SC2086  # EXTRA is a list of arguments
    "$py" benchmarks/side_network_epoch.py --device "${DEVICE:-cuda}" --max-steps "${STEPS:-200}" \
        --rounds "${ROUNDS:-2}" --precision "${PRECISION:-auto,fp32}" --out "$out" ${EXTRA:-}
    "$py" benchmarks/step_syncs.py --device "${DEVICE:-cuda}" --out "$out"
} 2>&1 | tee "$out/device_check.log"
