#!/usr/bin/env bash
# GPU benchmark: random-weight LLaVA-1.5-7B, LLaVA-NeXT-7B and Qwen2.5-VL-7B built from the bundled
# published configs (no download; speed does not depend on weight values), bf16, SDPA, batch 1,
# 64 text tokens, every registered method; full, pruned and oracle (the stock model fed only the
# kept tokens) prefill side by side, medians of paired ratios; and the selection micro-benchmark.
#
#   LLaVA-1.5-7B   576 visual tokens -> 192 / 128 / 64 kept
#   LLaVA-NeXT-7B  2880 content tokens (672x672 image, 5 crops) -> 320 kept
# (as ratios, so that the DRY_RUN models keep the same shares)
#   Qwen2.5-VL-7B  672x672 image, 576 merged tokens -> 22.2% kept (128)
#   Qwen2.5-VL-7B  1344x1344 image, 2304 merged tokens -> 22.2% kept (511)  (qwen25_hr)
#   Qwen2.5-VL-7B  a 16-frame 448x448 video, 2048 merged tokens -> 22.2% kept (455)  (qwen25_video)
#
# Usage (from the repository root, with the package installed in the active environment):
#   bash benchmarks/gpu_bench.sh                # everything: under 10 minutes on one H100 (estimated: not yet timed there)
#   bash benchmarks/gpu_bench.sh llava15        # some of: selection llava15 llava_next qwen25 qwen25_hr qwen25_video
#   DRY_RUN=1 bash benchmarks/gpu_bench.sh      # CPU, shrunk models, 1 repeat: checks the script
#   bash benchmarks/gpu_bench.sh vllm           # serving: the vLLM plugin on Qwen2.5-VL-7B (needs vllm;
#                                               # not in the default run); first checks exactness
#                                               # (benchmarks/vllm_exact.py: every plugin family, tiny
#                                               # models, CUDA graphs on) and stops if it fails
# Results: $OUT/selection.json, $OUT/<arch>/bench.{json,csv}, and the combined
# $OUT/gpu_bench.json and $OUT/table.md (OUT defaults to results/bench/gpu-<device name>).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-python}"
REPEATS="${REPEATS:-7}"
WARMUP="${WARMUP:-2}"
TEXT="${TEXT:-64}"
METHODS="${METHODS:-}"   # empty: every registered method

if [ "${DRY_RUN:-0}" = 1 ]; then
    DEVICE=cpu; DTYPE=float32; REPEATS=1; WARMUP=0; SHRINK=(--tiny-arch); GPU=dry-run; HR=224; VIDEO=112
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_bench.sh: no CUDA device visible to torch (DRY_RUN=1 checks the script on the CPU)" >&2
        exit 1
    fi
    DEVICE=cuda; DTYPE=bfloat16; SHRINK=()
    GPU="$("$PY" -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name(0)).strip('-').lower())")"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
HR="${HR:-1344}"        # the high-resolution image side
VIDEO="${VIDEO:-448}"   # the video's frame side
OUT="${OUT:-results/bench/gpu-$GPU}"
mkdir -p "$OUT"

common=(--device "$DEVICE" --dtype "$DTYPE" --attn sdpa --batch 1 --text-tokens "$TEXT"
        --repeats "$REPEATS" --warmup "$WARMUP" --decode-tokens 0 --no-plot --quiet --force "${SHRINK[@]}")
if [ -n "$METHODS" ]; then
    common+=(--methods "$METHODS")
fi

run_selection() {
    local compiled=()
    if [ "$DEVICE" = cuda ]; then compiled=(--compiled); fi
    "$PY" benchmarks/selection_bench.py --device "$DEVICE" --repeats "$((REPEATS * 7))" --warmup "$WARMUP" \
        --out "$OUT/selection.json" "${compiled[@]}"
}
run_llava15() {
    "$PY" -m vlmprune.apps.cli bench --model llava-1.5-7b --ratios 0.3334,0.2223,0.1112 "${common[@]}" --out "$OUT/llava-1.5-7b"
}
run_llava_next() {
    "$PY" -m vlmprune.apps.cli bench --model llava-next-7b --image-size 672x672 --ratios 0.1112 "${common[@]}" \
        --out "$OUT/llava-next-7b"
}
run_qwen25() {
    "$PY" -m vlmprune.apps.cli bench --model qwen2.5-vl-7b --image-size 672x672 --ratios 0.222 "${common[@]}" \
        --out "$OUT/qwen2.5-vl-7b"
}

run_qwen25_hr() {
    "$PY" -m vlmprune.apps.cli bench --model qwen2.5-vl-7b --image-size "${HR}x${HR}" --ratios 0.222 "${common[@]}" \
        --out "$OUT/qwen2.5-vl-7b-${HR}"
}
run_qwen25_video() {
    "$PY" -m vlmprune.apps.cli bench --model qwen2.5-vl-7b --image-size "${VIDEO}x${VIDEO}" --video-frames 16 \
        --ratios 0.222 "${common[@]}" --out "$OUT/qwen2.5-vl-7b-video16"
}

run_vllm() {
    # exactness first (plugin against the HF session, tiny models, CUDA graphs on): nothing is timed
    # unless every request matches; DRY_RUN checks one family on the CPU and times nothing
    if [ "${DRY_RUN:-0}" = 1 ]; then
        "$PY" benchmarks/vllm_exact.py --families qwen2_5_vl --out "$OUT/vllm-exact.json"
        return
    fi
    "$PY" benchmarks/vllm_exact.py --out "$OUT/vllm-exact.json"
    "$PY" benchmarks/vllm_bench.py --arch qwen2.5-vl-7b --dtype "$DTYPE" --no-enforce-eager \
        --gpu-memory-utilization 0.8 --image-size 672 --concurrency 1,16,64 --requests-c1 16 \
        --model-dir "$OUT/vllm-model" --out "$OUT/vllm"
}

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(selection llava15 llava_next qwen25 qwen25_hr qwen25_video)
fi
for t in "${targets[@]}"; do
    case "$t" in
        selection) run_selection ;;
        llava15) run_llava15 ;;
        llava_next) run_llava_next ;;
        qwen25) run_qwen25 ;;
        qwen25_hr) run_qwen25_hr ;;
        qwen25_video) run_qwen25_video ;;
        vllm) run_vllm ;;
        *) echo "gpu_bench.sh: unknown target $t (selection, llava15, llava_next, qwen25, qwen25_hr, qwen25_video, vllm)" >&2; exit 2 ;;
    esac
done
"$PY" benchmarks/gpu_table.py "$OUT"
