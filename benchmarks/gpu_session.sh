#!/bin/bash
# The GPU line of the benchmark (docs/benchmark_lego_800_h200.md), for a session that is lent a GPU machine which has
# torch but not nerfstudio and no network.
#
#   bash benchmarks/gpu_session.sh prepare [DATA]   # here: wheels for Python 3.12 and the scene into .dev/ (~62 MiB)
#   bash benchmarks/gpu_session.sh run [BUDGET]      # there, with .dev carried: rs-sdf, then instant-ngp in the time left
#   bash benchmarks/gpu_session.sh variants BUDGET "FLAGS A" "FLAGS B" ...  # there: rs-sdf variants side by side
#
# `run` writes its logs and results to $OUT (or ./gpu_out). Extra rs-sdf flags: RS_SDF_ARGS="..."; rs-sdf's rays per
# batch: RS_SDF_RAYS (8192; 16384 for `variants`). `variants` trains one rs-sdf per FLAGS at once on the one GPU,
# each with 4 CPU threads: a step is bound by launches, not by the GPU's work, so a session's device time compares
# several settings on one clock (each variant's step count says how much they slowed one another). Each variant's
# results and log go to $OUT/variant_N_results.json and $OUT/variant_N_log.txt, and its table row to the console.
set -u
cd "$(dirname "$0")/.." || exit 1
BUNDLE=.dev

prepare() {
    local data=${1:-../shared/data/lego_800}
    grep -qx "/$BUNDLE/" .git/info/exclude 2>/dev/null || echo "/$BUNDLE/" >>.git/info/exclude
    mkdir -p "$BUNDLE/whl" "$BUNDLE/scene"
    local platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64"
    platforms="$platforms --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
    # nerfstudio and what importing it needs beyond the device's own packages (torch, numpy, scipy, matplotlib, ...)
    for package in nerfstudio==1.1.5 nerfacc==0.5.2 gsplat==1.4.0 tyro==1.0.17 viser==0.2.7 tensorly==0.10.0 \
        msgspec==0.22.0 websockets==17.4 rawpy==0.28.0 fpsample==0.3.3 appdirs==1.4.4 defusedxml==0.7.1 dill==0.4.1 \
        docstring_parser==0.18.0 multiprocess==0.70.19 pathos==0.3.5 ppft==1.7.8 pyquaternion==0.9.9 \
        pytorch-msssim==1.0.0 splines==0.3.0 torch_fidelity==0.4.0 typeguard==4.6.1 shtab==1.13.0; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            $platforms -d "$BUNDLE/whl" "$package" || { echo "error: could not download $package" >&2; exit 1; }
    done
    cp -r "$data"/train "$data"/val "$data"/test "$data"/transforms_*.json "$BUNDLE/scene/"
    du -sh "$BUNDLE"
}

install() {
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NERFSTUDIO_METHOD_CONFIGS="rs-sdf=rs_nerfstudio.method:rs_sdf"
    if python3 -c "import nerfstudio" 2>/dev/null; then return; fi  # already there (a venv on PATH): nothing to install
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$BUNDLE"/whl/*.whl \
        || exit 1
    nvidia-smi -L
    # nerfacc 0.5.2 predates CUDA 13's CUB, which dropped cub::Equality: use the libcu++ functor that replaced it.
    sed -i 's/cub::Equality()/cuda::std::equal_to<>()/g; s|#include <cub/cub.cuh>|&\n#include <cuda/std/functional>|' \
        /tmp/site/nerfacc/cuda/csrc/scan.cu
}

run() {
    local budget=${1:-300} out=${OUT:-gpu_out} start
    start=$(date +%s)
    mkdir -p "$out"
    install
    # instant-ngp needs nerfacc's CUDA extension: build it meanwhile, niced, on 6 cores
    (MAX_JOBS=6 nice -n 19 python3 -c "from nerfacc.cuda import _backend as b; print('nerfacc built:', b._C is not None)" \
        >"$out/nerfacc.txt" 2>&1 &)
    python3 benchmarks/compare_methods.py --data "$BUNDLE/scene" --budget "$budget" --methods rs-sdf \
        --rays-per-batch "${RS_SDF_RAYS:-8192}" --output-dir /tmp/bench_rs \
        --rs-sdf-args="--pipeline.model.eval-num-rays-per-chunk 65536 ${RS_SDF_ARGS:-}"
    cp /tmp/bench_rs/results.json "$out/rs_results.json"; cp /tmp/bench_rs/rs-sdf/log.txt "$out/rs_log.txt"
    local left=$((560 - ($(date +%s) - start) - 110))  # a device call ends at 600 s; instant-ngp needs ~110 s beside training
    if [ "$left" -ge 30 ]; then
        python3 benchmarks/compare_methods.py --data "$BUNDLE/scene" --budget "$(( left < budget ? left : budget ))" \
            --methods instant-ngp --rays-per-batch 8192 --score-views 1 --output-dir /tmp/bench_ngp
        cp /tmp/bench_ngp/results.json "$out/ngp_results.json"; cp /tmp/bench_ngp/instant-ngp/log.txt "$out/ngp_log.txt"
    fi
    echo "elapsed $(($(date +%s) - start)) s"
}

variants() {
    local budget=$1 out=${OUT:-gpu_out} start n=0 runs status=0 flags
    shift
    start=$(date +%s)
    mkdir -p "$out"
    runs=$(mktemp -d /tmp/variants.XXXX)  # a fresh folder: a warm machine keeps the last call's
    install
    for flags in "$@"; do
        n=$((n + 1))
        echo "variant $n: $flags"
        OMP_NUM_THREADS=4 python3 benchmarks/compare_methods.py --data "$BUNDLE/scene" --budget "$budget" \
            --methods rs-sdf --rays-per-batch "${RS_SDF_RAYS:-16384}" --marks 30 60 90 120 180 240 300 \
            --output-dir "$runs/$n" --rs-sdf-args="--pipeline.model.eval-num-rays-per-chunk 65536 $flags" \
            >"$runs/$n.stdout" 2>&1 &
    done
    wait
    # two files per variant (the device tool brings back 8 files): the results, and one log with the flags first
    n=0
    for flags in "$@"; do
        n=$((n + 1))
        { echo "variant $n: $flags"; cat "$runs/$n.stdout" "$runs/$n/rs-sdf/log.txt" 2>/dev/null; } \
            >"$out/variant_${n}_log.txt"
        cp "$runs/$n/results.json" "$out/variant_${n}_results.json" 2>/dev/null \
            || { echo "variant $n: no results; see variant_${n}_log.txt" >&2; status=1; }
        grep -h -m1 "^| rs-sdf" "$runs/$n/results.md" 2>/dev/null | sed "s/^/variant $n: /"
    done
    echo "elapsed $(($(date +%s) - start)) s"
    return $status
}

case "${1:-}" in
    prepare) prepare "${2:-}" ;;
    run) run "${2:-}" ;;
    variants) [ $# -ge 3 ] || { echo "usage: bash benchmarks/gpu_session.sh variants BUDGET FLAGS..." >&2; exit 2; }
        shift; variants "$@"; exit $? ;;
    *) echo "usage: bash benchmarks/gpu_session.sh prepare [DATA] | run [BUDGET] | variants BUDGET FLAGS..." >&2
        exit 2 ;;
esac
