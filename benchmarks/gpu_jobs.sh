#!/usr/bin/env bash
# A time-boxed GPU lease, second form: one bench alone, then several `pneumo reproduce` jobs side by side.
#
#   benchmarks/gpu_jobs.sh DATA OUT BUDGET_SECONDS
#
# Small models at 128 px leave a big GPU mostly idle (kernel-launch bound), so the seeds of a suite train as
# separate processes sharing the card: `reproduce --seed N` claims its run folders with a lock, and jobs of one suite
# share one --out. Every job is cut when the budget runs out; running the script again with the same WORK resumes
# them from their run folders (finished rows are kept), and the phase log gives each job's wall time. OUT gets a new
# pack whenever the bench or a job ends, so a lease cut short still returns what finished.
#
# Environment:
#   PYTHON     default python3
#   WORK       run folders, cache and logs (default /tmp/pneumo-lease); keep it between calls to resume. Not under
#              OUT, nor in a working tree that the device tool replaces on each call (both lose it)
#   BENCH_ARGS options of `pneumo bench` (its --out is added), empty for no bench; BENCH_CAP its seconds (default 200)
#   JOB_THREADS  OMP_NUM_THREADS of each job (default 4: four jobs share 16 cores)
#   JOBS       ";"-separated jobs, each "SUITE:reproduce options", run side by side, e.g.
#              "cpu:--seed 0;cpu:--seed 1;full:--max-seeds 1 --only acgan-64"
#   PNEUMO_GIT_COMMIT  where the source travels without its .git, so that runs record the right commit
#
# OUT receives lease.tar.gz (logs, tables, per-epoch metrics, evaluations, GAN sample grids; no weights, no dataset
# images), session.log, bench-gpu.json and every ACGAN's EMA generator (so GAN-balanced rows can train elsewhere, and
# its sample quality can be measured) in generators.tar.part00, part01, ... (the tool returns at most 8 files of up to
# 16 MiB; the 64 px generator alone is 23 MiB): `cat generators.tar.part* | tar -x` gives SUITE/runs/RUN/...
set -u
data=${1:?usage: gpu_jobs.sh DATA OUT BUDGET_SECONDS}
out=${2:?usage: gpu_jobs.sh DATA OUT BUDGET_SECONDS}
budget=${3:?usage: gpu_jobs.sh DATA OUT BUDGET_SECONDS}
py=${PYTHON:-python3}
work=${WORK:-/tmp/pneumo-lease}
bench_args=${BENCH_ARGS-}
bench_cap=${BENCH_CAP:-200}
jobs=${JOBS-}
mkdir -p "$work/logs" "$out"
export PNEUMO_CACHE_DIR=${PNEUMO_CACHE_DIR:-$work/cache}
start=$SECONDS
log() { echo "[$((SECONDS - start))s] $*" | tee -a "$work/logs/session.log"; }
left() { echo $((budget - (SECONDS - start) - 45)); }  # kept for a job killed late and the last pack

pack() {  # jobs pack as they end, side by side: one at a time, so an older pack never replaces a newer one
  (
    flock 9
    tar -czf "$out/lease.tar.gz.tmp" -C "$work" --exclude='*.safetensors' --exclude='*.u8' --exclude='*.onnx' \
      --exclude='synthetic*' --exclude='cache' . 2>/dev/null  # files that vanish mid-write: exit 1, still usable
    mv -f "$out/lease.tar.gz.tmp" "$out/lease.tar.gz"
    cp -f "$work/logs/session.log" "$out/"
    # every ACGAN's EMA generator in one tar (paths SUITE/runs/RUN/...), in parts of 15 MiB: the device tool returns
    # at most 8 files of up to 16 MiB, so one file per generator could crowd out the pack
    gens=("$work"/*/runs/acgan*/generator_ema.safetensors)
    if [ -f "${gens[0]}" ]; then
      tar -cf "$out/generators.tar" -C "$work" "${gens[@]#"$work"/}"
      # exit 1: a generator replaced (atomically, each epoch) while read; the tar holds one whole version of each
      if (($? <= 1)); then
        rm -f "$out"/generators.tar.part* && split -b 15M -d "$out/generators.tar" "$out/generators.tar.part"
      fi
      rm -f "$out/generators.tar"
    fi
  ) 9>"$work/.pack.lock"
  true
}

log "data $data, budget ${budget}s, work $work"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$py" -c "import torch, torchvision, sys; print(sys.version); print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  nproc
} >"$work/logs/env.txt" 2>&1

cap=$bench_cap
(($(left) < cap)) && cap=$(left)
if [ -n "$bench_args" ] && ((cap < 30)); then
  log "skip bench: ${cap}s of the budget left"
elif [ -n "$bench_args" ]; then
  log "start bench (at most ${cap}s): pneumo bench $bench_args"
  timeout --signal=INT --kill-after=15 "$cap" "$py" -m pneumo bench --data "$data" $bench_args \
    --out "$out/bench-gpu.json" >"$work/logs/bench.log" 2>&1
  log "end bench: exit $?"
  # a bench cut by its cap leaves its figures so far in bench-gpu.partial.json
  [ -f "$out/bench-gpu.partial.json" ] && mv -f "$out/bench-gpu.partial.json" "$out/bench-gpu.json"
  pack
fi

pids=()
i=0
IFS=';' read -ra job_list <<<"$jobs"
cap=$(left)
for spec in "${job_list[@]}"; do
  [ -z "${spec// /}" ] && continue
  i=$((i + 1))
  suite=${spec%%:*}
  name="job$i-$suite"
  if ((cap < 30)); then
    log "skip $name: ${cap}s of the budget left"
    continue
  fi
  log "start $name (at most ${cap}s): pneumo reproduce --suite $suite ${spec#*:}"
  (
    begin=$SECONDS
    # shellcheck disable=SC2086  # the job's options are words
    OMP_NUM_THREADS=${JOB_THREADS:-4} timeout --signal=INT --kill-after=15 "$cap" "$py" -m pneumo reproduce --data "$data" --suite "$suite" \
      --out "$work/$suite" ${spec#*:} >"$work/logs/$name.log" 2>&1
    log "end $name: exit $? after $((SECONDS - begin))s"
    pack
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

# Each job wrote its suite's table when it ended; one more pass tabulates all the finished rows of every suite.
for suite in $(for spec in "${job_list[@]}"; do [ -n "${spec// /}" ] && echo "${spec%%:*}"; done | sort -u); do
  [ -d "$work/$suite/runs" ] || continue
  cap=$(left)
  if ((cap < 10)); then
    log "skip report $suite: ${cap}s of the budget left"
    continue
  fi
  timeout --kill-after=5 "$cap" "$py" -m pneumo reproduce --suite "$suite" --out "$work/$suite" --report-only \
    >"$work/logs/report-$suite.log" 2>&1
  log "report $suite: exit $?"
done
pack
log "done"
