#!/usr/bin/env bash
# Real-size GPU benchmark of issue 4 ("vlmprune bench"): random-weight LLaVA-1.5-7B, LLaVA-NeXT-7B and
# Qwen2.5-VL-7B built from the bundled published configs (no download; speed does not depend on
# weight values), bf16, SDPA, batch 1, 64 text tokens, every registered method.
#
#   LLaVA-1.5-7B   576 visual tokens  -> 192 / 128 / 64 kept
#   LLaVA-NeXT-7B  2880 content tokens (672x672 image, 5 crops) -> 640 / 320 kept
#   Qwen2.5-VL-7B  672x672 image, 576 merged tokens -> 22.2% kept (128)
#
# Anchors to compare with (issue 4): SPpruner 2.53x at 22.2% on Qwen2.5-VL; CDPruner LLaVA-NeXT
# prefill 246 -> 38 ms at 320 tokens; FSR LLaVA-1.5 prefill 3.06 -> 0.79 ms/token at 64 tokens.
# Targets: pruned/oracle prefill <= 1.05 for every pre-LLM method at every budget; peak memory of a
# pruned run never above the full run's (peak_mem_bytes vs full_peak_mem_bytes in bench.csv).
#
# Usage (from the repository root, with the package installed in the active environment):
#   bash benchmarks/gpu_bench.sh              # all three models
#   bash benchmarks/gpu_bench.sh llava15      # one of: llava15 llava_next qwen25
#   REPEATS=10 DECODE=32 bash benchmarks/gpu_bench.sh
# Results: results/bench/<arch>-<gpu>/bench.{json,csv,png}; the device is named in bench.json
# ("meta.device") and in every row. Budget: about 4 + 4 + 2 minutes on an H100 with the defaults.
set -euo pipefail

REPEATS="${REPEATS:-5}"
WARMUP="${WARMUP:-1}"
DECODE="${DECODE:-16}"
TEXT="${TEXT:-64}"
METHODS="${METHODS:-}"   # empty: every registered method
OUT_ROOT="${OUT_ROOT:-results/bench}"

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_bench.sh: no CUDA device visible to torch" >&2
    exit 1
fi
GPU="$(python -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name(0)).strip('-').lower())")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

common=(--device cuda --dtype bfloat16 --attn sdpa --batch 1 --text-tokens "$TEXT"
        --repeats "$REPEATS" --warmup "$WARMUP" --decode-tokens "$DECODE")
if [ -n "$METHODS" ]; then
    common+=(--methods "$METHODS")
fi

run_llava15() {
    vlmprune bench --model llava-1.5-7b --budgets 192,128,64 "${common[@]}" \
        --out "$OUT_ROOT/llava-1.5-7b-$GPU"
}
run_llava_next() {
    vlmprune bench --model llava-next-7b --image-size 672x672 --budgets 640,320 "${common[@]}" \
        --out "$OUT_ROOT/llava-next-7b-$GPU"
}
run_qwen25() {
    vlmprune bench --model qwen2.5-vl-7b --image-size 672x672 --ratios 0.222 "${common[@]}" \
        --out "$OUT_ROOT/qwen2.5-vl-7b-$GPU"
}

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(llava15 llava_next qwen25)
fi
for t in "${targets[@]}"; do
    case "$t" in
        llava15) run_llava15 ;;
        llava_next) run_llava_next ;;
        qwen25) run_qwen25 ;;
        *) echo "gpu_bench.sh: unknown target $t (llava15, llava_next, qwen25)" >&2; exit 2 ;;
    esac
done
