#!/usr/bin/env bash
# GPU benchmark, prepared for one run on the device machine (one H100, no network), from the
# repository root, with the wheels of .whl/ carried along:
#     bash bench/gpu/run_gpu.sh
# Writes under $OUT: gpu.txt, vectors_gpu.json (+ .log), cost_gpu.json (+ .log).
# Copy $OUT/cost_gpu.json and $OUT/vectors_gpu.json into bench/results/ and run
# `python bench/make_report.py`.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
OUT=${OUT:-/tmp/patchaudit_gpu_out}
mkdir -p "$OUT"
T0=$(date +%s)

# 1. TransformerLens (and anything else carried) into /tmp/site; no network, no deps
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -3
# TransformerLens imports `datasets` at import time (type hints only for what we call); the
# image may lack it (and pyarrow, ~40 MB): a stub stands in when the real one is missing.
STUBS=""
python3 -c "import datasets" 2>/dev/null || STUBS="$PWD/bench/gpu/stubs"
export PYTHONPATH="/tmp/site:${STUBS:+$STUBS:}$PWD/backend"
echo "datasets stub: ${STUBS:-no (real package present)}" | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/gpu.txt"
python3 -c "import torch, transformers, transformer_lens, patchaudit; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -2 | tee -a "$OUT/gpu.txt"

# 2. correctness: engine on cuda vs the float64 reference vectors (1e-4 relative)
timeout 90 python3 -m patchaudit.bench.vectors tests/data/tiny_gpt2 --device cuda \
    --out "$OUT/vectors_gpu.json" > "$OUT/vectors.log" 2>&1
tail -14 "$OUT/vectors.log"

# 3. cost: GPT-2 small / medium / XL configs (random init), 8 pairs x 16 tokens, heads, fp32.
#    Every measurement is capped (15 s of repeats; a run slower than that is measured once) and
#    the whole sweep stops starting new measurements after PATCHAUDIT_BENCH_BUDGET_S seconds.
LEFT=$(( 330 - ($(date +%s) - T0) ))
export PATCHAUDIT_BENCH_BUDGET_S=$(( LEFT > 60 ? LEFT - 45 : 30 ))
timeout $(( LEFT > 30 ? LEFT : 30 )) python3 -m patchaudit.bench cost --gpu \
    --out "$OUT/cost_gpu.json" > "$OUT/cost_gpu.log" 2>&1
echo "cost exit $?"
grep -E "median|skip|failed|wrote|Error" "$OUT/cost_gpu.log" | tail -40
echo "total $(( $(date +%s) - T0 )) s"
