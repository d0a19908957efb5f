#!/usr/bin/env bash
# One time-boxed GPU session: the GPU figures of BENCHMARKS.md, then rows of the full suite in priority order.
#
#   benchmarks/gpu_session.sh DATA OUT [BUDGET_SECONDS]
#
# Every phase is capped by what is left of the budget (a phase that would overrun is interrupted, and the suite
# resumes from its run folders next time), so a short GPU lease still returns whatever finished. After each phase
# the small outputs (tables, JSON, per-epoch metrics, evaluation plots, GAN sample grids; no weights, no images of
# the dataset) are packed into OUT/gpu-session.tar.gz, and results.md / bench-gpu.{md,json} are copied to OUT.
#
# Phases: the environment; `pneumo bench` (training section); the engine itself (`pneumo train`, 2 epochs) with the
# device-resident data path and with the DataLoader, per model; then the suite phases.
#
# Environment: PYTHON (default python3), SUITE (default full), BENCH_ARGS (the bench options), ENGINE_MODELS
# ("model:batch ...", empty for none), ENGINE_ARGS (extra `pneumo train` options), SUITE_PHASES (";"-separated phases, each
# "MAX_SEEDS:experiment experiment ..."), WORK (run folders and logs, default OUT/work; OUT itself receives only the
# tables, the JSON files and the pack).
# The whole `cpu` results table on the GPU, timed by the phase log (issue: "the whole set of runs in under 15 minutes"),
# after the compiled bench and without the engine phases:
#   SUITE=cpu SUITE_PHASES="1:" ENGINE_MODELS="" BENCH_ARGS="--device cuda --sections training \
#     --models resnet18,densenet121 --sizes 224 --compile --steps 10" benchmarks/gpu_session.sh DATA OUT 540
# Where the source travels without its .git (a copied working tree), export PNEUMO_GIT_COMMIT first, so that the
# run folders and results record the right commit.
set -u
data=${1:?usage: gpu_session.sh DATA OUT [BUDGET_SECONDS]}
out=${2:?usage: gpu_session.sh DATA OUT [BUDGET_SECONDS]}
budget=${3:-540}
py=${PYTHON:-python3}
suite=${SUITE:-full}
work=${WORK:-$out/work}
runs=$work/suite
bench_args=${BENCH_ARGS:---device cuda --sections training --models resnet18,densenet121 --sizes 224 --no-compile}
engine_models=${ENGINE_MODELS-"resnet18:256 densenet121:128"}
engine_args=${ENGINE_ARGS:---image-size 224 --epochs 2}
phases=${SUITE_PHASES-"1:acgan-64 cnn-normal-bacteria-virus-224 cnn-normal-bacteria-virus-gan-balanced-224;\
1:cnn-normal-pneumonia-224 cnn-bacteria-virus-224;\
3:cnn-normal-pneumonia-224 cnn-bacteria-virus-224 cnn-normal-bacteria-virus-224 cnn-normal-bacteria-virus-gan-balanced-224"}
mkdir -p "$work/logs" "$work/engine" "$runs"
start=$SECONDS
log() { echo "[$((SECONDS - start))s] $*" | tee -a "$work/logs/session.log"; }

pack() {
  # Ignore files that vanish while a run writes (tar exit 1); the pack is still consistent per file.
  tar -czf "$out/gpu-session.tar.gz.tmp" -C "$work" --exclude='*.safetensors' --exclude='synthetic' \
    --exclude='*.u8' --exclude='*.onnx' logs engine suite 2>/dev/null
  mv -f "$out/gpu-session.tar.gz.tmp" "$out/gpu-session.tar.gz"
  cp -f "$work/logs/session.log" "$out/"
  # The GAN's EMA generator (a few MB) comes back too, so that GAN-balanced rows can be trained elsewhere.
  for g in "$runs"/runs/acgan*/generator_ema.safetensors; do [ -f "$g" ] && cp -f "$g" "$out/"; done
  [ -f "$runs/results.md" ] && cp -f "$runs/results.md" "$runs/results.json" "$out/" 2>/dev/null
  true
}

phase() {  # phase NAME CAP_SECONDS COMMAND...: run COMMAND for at most CAP seconds (less if the budget is short)
  local name=$1 cap=$2
  shift 2
  local left=$((budget - (SECONDS - start) - 25))
  ((cap > left)) && cap=$left
  if ((cap < 30)); then
    log "skip $name: ${left}s of the budget left"
    return
  fi
  log "start $name (at most ${cap}s): $*"
  timeout --signal=INT --kill-after=15 "$cap" "$@" >"$work/logs/$name.log" 2>&1
  log "end $name: exit $?"
  pack
}

log "data $data, budget ${budget}s"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$py" -c "import torch, torchvision, sys; print(sys.version); print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  "$py" -c "import os, torch; d = os.path.join(torch.hub.get_dir(), 'checkpoints'); \
print('torch hub weights:', sorted(os.listdir(d)) if os.path.isdir(d) else 'none')"
} >"$work/logs/env.txt" 2>&1

phase bench 150 "$py" -m pneumo bench --data "$data" $bench_args --out "$out/bench-gpu.json"
[ -f "$work/logs/bench.log" ] && grep -v '^\[' "$work/logs/bench.log" >"$out/bench-gpu.md"

for spec in $engine_models; do
  for path in resident loader; do
    phase "engine-${spec%%:*}-$path" 120 "$py" -m pneumo train --data "$data" --model "${spec%%:*}" \
      --batch-size "${spec#*:}" $engine_args --out "$work/engine/${spec%%:*}-$path" \
      --set data_path=$path --set fit_ood=false --set progress=false
  done
done
"$py" - "$work/engine" >"$out/engine-gpu.md" 2>&1 <<'PY'
import json, sys
from pathlib import Path

print("| run | epoch | images/s (training) | epoch seconds (with validation) | val AUC |\n|---|---|---|---|---|")
for run in sorted(Path(sys.argv[1]).iterdir()):
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        r = json.loads(line)
        print(f"| {run.name} | {r['epoch']} | {r['images_per_s']:,.0f} | {r['seconds']:.1f} | {r['val_auc']:.3f} |")
PY

i=0
IFS=';' read -ra phase_list <<<"$phases"
for spec in "${phase_list[@]}"; do
  i=$((i + 1))
  seeds=${spec%%:*}
  only=()
  for name in ${spec#*:}; do only+=(--only "$name"); done
  phase "suite-$i" 600 "$py" -m pneumo reproduce --data "$data" --suite "$suite" --out "$runs" \
    --max-seeds "$seeds" "${only[@]}"
done
"$py" -m pneumo reproduce --suite "$suite" --out "$runs" --report-only >"$work/logs/report.log" 2>&1
pack
log "done"
