#!/usr/bin/env bash
# GPU benchmark: seconds per optimization step and peak GPU memory of hpcwf's VMC (K-FAC) for
# model sizes S/M/L on LiH, N2 and a mini foundation set (3 compounds x 2 geometries,
# inputs/datasets/foundation_cpu.toml), on 1 GPU (1 rank) and on 2 ranks x 1 GPU (mpiexec,
# when 2 GPUs are visible). Prints one table row per run. Ranks hold different geometries
# (hpcwf's data parallelism): on 2 ranks LiH and N2 are two geometries each (equilibrium and
# stretched by 0.1 bohr), the mini set is split 3 + 3.
#
#   benchmarks/gpu.sh [--dry-run] [--cpu] [--steps N] [--walkers N] [--mcmc-steps N]
#                     [--sizes "S M L"] [--systems "lih n2 mini"] [--layouts "1x1 2x1"] [--out DIR]
#
#   --dry-run  writes and validates every job (`hpcwf check`: no jax, no GPU), detects the GPUs
#              and prints the commands it would run; nothing is trained
#   --cpu      runs the same benchmark on the CPU (JAX_PLATFORMS=cpu, no memory column): a check
#              of the script itself on a machine without GPU, e.g.
#              benchmarks/gpu.sh --cpu --sizes S --systems lih --layouts 1x1 --steps 6 --walkers 64
#
# s/step: median over the steps after warm-up (each geometry's first visits compile and burn in)
# of the slowest rank's `step_time` (energies.h5; the whole step: MCMC, local energies,
# gradients, K-FAC statistics and the global update). Peak MiB: the largest `memory.used` of the
# run's GPUs (nvidia-smi, sampled every 100 ms) minus what they used before the run; JAX's
# preallocation is off (XLA_PYTHON_CLIENT_PREALLOCATE=false), so this is what XLA's allocator
# reserved at most, an upper bound of the live arrays. Python: $PYTHON, else .venv/bin/python,
# else python3; install with `pip install -c constraints.txt -e .[cuda12]`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
MPIEXEC=$(dirname "$PYTHON")/mpiexec
[[ -x $MPIEXEC ]] || MPIEXEC=$(command -v mpiexec || true)

DRY=0 CPU=0 STEPS=40 WALKERS=1024 MCMC=10 SIZES="S M L" SYSTEMS="lih n2 mini" LAYOUTS="1x1 2x1" OUT=""
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --cpu) CPU=1 ;;
    --steps) STEPS=$2; shift ;;
    --walkers) WALKERS=$2; shift ;;
    --mcmc-steps) MCMC=$2; shift ;;
    --sizes) SIZES=$2; shift ;;
    --systems) SYSTEMS=$2; shift ;;
    --layouts) LAYOUTS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) usage 0 ;;
    *) echo "gpu.sh: unknown argument $1" >&2; usage 2 ;;
  esac
  shift
done
for s in $SIZES; do [[ $s =~ ^(S|M|L)$ ]] || { echo "gpu.sh: --sizes: $s is not S, M or L" >&2; exit 2; }; done
for s in $SYSTEMS; do [[ $s =~ ^(lih|n2|mini)$ ]] || { echo "gpu.sh: --systems: $s is not lih, n2 or mini" >&2; exit 2; }; done
for l in $LAYOUTS; do [[ $l =~ ^(1x1|2x1)$ ]] || { echo "gpu.sh: --layouts: $l is not 1x1 or 2x1" >&2; exit 2; }; done
[[ $STEPS =~ ^[0-9]+$ && $WALKERS =~ ^[0-9]+$ && $MCMC =~ ^[0-9]+$ ]] || { echo "gpu.sh: --steps, --walkers, --mcmc-steps take integers" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/hpcwf-gpu-bench.XXXXXX")}
mkdir -p "$OUT"

# ---- GPUs ------------------------------------------------------------------------------------
GPUS=()
if ((CPU == 0)) && command -v nvidia-smi >/dev/null; then
  mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then  # stay inside the allocation (SLURM sets it)
    IFS=, read -ra GPUS <<<"$CUDA_VISIBLE_DEVICES"
  fi
fi
if ((CPU)); then
  echo "device: CPU (--cpu); peak memory not measured"
elif ((${#GPUS[@]} == 0)); then
  echo "device: no GPU visible (nvidia-smi)"
  ((DRY)) || { echo "gpu.sh: no GPU: use --dry-run or --cpu" >&2; exit 1; }
else
  echo "device: ${#GPUS[@]} GPU(s): ${GPUS[*]}"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | sed 's/^/  /' || true
  ((DRY)) || "$PYTHON" -c "import jax; assert jax.default_backend() == 'gpu', jax.devices()" ||
    { echo "gpu.sh: jax sees no GPU: pip install -c constraints.txt -e .[cuda12]" >&2; exit 1; }
fi
"$PYTHON" -c "import jax, kfac_jax; print(f'jax {jax.__version__}, kfac-jax {kfac_jax.__version__}')" 2>/dev/null ||
  echo "(jax not importable with $PYTHON)"
echo "python: $PYTHON; runs in $OUT"

# ---- jobs ------------------------------------------------------------------------------------
geometry() {  # geometry SYSTEM RANKS: the [[geometry]] tables or dataset line of a system
  # hpcwf gives every rank its own geometries, so a single molecule on 2 ranks is two
  # geometries: the equilibrium one and one stretched by 0.1 bohr (same shapes, same cost).
  local system=$1 ranks=$2 i
  case $system in
    mini) printf 'dataset = "%s"\n' "$ROOT/inputs/datasets/foundation_cpu.toml" ;;
    lih | n2)
      for ((i = 0; i < ranks; i++)); do
        if [[ $system == lih ]]; then
          printf '[[geometry]]\nname = "LiH_%d"\natoms = [["Li", 0.0, 0.0, 0.0], ["H", %.3f, 0.0, 0.0]]\n' "$i" "$(awk -v i="$i" 'BEGIN { print 3.015 + 0.1 * i }')"
        else
          printf '[[geometry]]\nname = "N2_%d"\natoms = [["N", 0.0, 0.0, 0.0], ["N", %.3f, 0.0, 0.0]]\n' "$i" "$(awk -v i="$i" 'BEGIN { print 2.068 + 0.1 * i }')"
        fi
      done ;;
  esac
}
n_geometries() { case $1 in mini) echo 6 ;; *) echo "$2" ;; esac; }  # n_geometries SYSTEM RANKS

write_job() {  # write_job SYSTEM SIZE RANKS DIR
  local system=$1 size=$2 ranks=$3 dir=$4
  mkdir -p "$dir"
  {
    echo "seed = 0"
    [[ $system != mini ]] || geometry "$system" "$ranks"  # the dataset key before any table
    cat <<TOML
[model]
size = "$size"
[pretraining]
steps = 1
[optimization]
steps = $STEPS
batch_size = $WALKERS
[mcmc]
steps_per_update = $MCMC
burn_in_steps = 10
[evaluation]
steps = 0
[checkpoint]
every_minutes = 0
[output]
dir = "$dir/run"
print_every = 10
TOML
    [[ $system == mini ]] || geometry "$system" "$ranks"
  } >"$dir/job.toml"
}

s_per_step() {  # s_per_step RUN_DIR WARM: median over steps >= WARM of the slowest rank's step_time
  "$PYTHON" - "$1" "$2" <<'PY'
import sys

import h5py
import numpy as np

with h5py.File(f"{sys.argv[1]}/energies.h5", "r") as f:
    step, step_time = f["train/step"][:], f["train/step_time"][:]
warm = step >= int(sys.argv[2])
slowest = [step_time[(step == t)].max() for t in np.unique(step[warm])]
print(f"{np.median(slowest):.4f} {len(slowest)}" if slowest else "nan 0")
PY
}

peak_mib() {  # peak_mib SAMPLES BASELINE GPU...: largest rise of memory.used over the run's GPUs
  # Lines are "index, uuid, MiB"; a GPU is named by index or UUID (CUDA_VISIBLE_DEVICES may hold either).
  local samples=$1 baseline=$2; shift 2
  awk -F', *' -v gpus="$*" '
    BEGIN { n = split(gpus, g, " "); for (i = 1; i <= n; i++) want[g[i]] = 1 }
    NR == FNR { base[$1] = $3; next }
    ($1 in want) || ($2 in want) { if ($3 - base[$1] > m) m = $3 - base[$1] }
    END { print m + 0 }
  ' "$baseline" "$samples"
}

# ---- runs ------------------------------------------------------------------------------------
ROWS=()
row() { ROWS+=("$(printf '%-6s %-4s %-6s %5s %7s %6s %9s %9s  %s' "$@")"); }
row system size layout geoms walkers steps s/step "peak MiB" status
failed=0
for system in $SYSTEMS; do
  for size in $SIZES; do
    for layout in $LAYOUTS; do
      ranks=${layout%x1}
      dir=$OUT/$system-$size-$layout
      write_job "$system" "$size" "$ranks" "$dir"
      if ! check=$(PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -m hpcwf check "$dir/job.toml" 2>&1); then
        row "$system" "$size" "$layout" "-" "$WALKERS" "-" "-" "-" "job invalid: $check"; failed=1; continue
      fi
      geoms=$(n_geometries "$system" "$ranks")
      warm=$(( (geoms + ranks - 1) / ranks * 2 + 2 ))  # first visits of every geometry of a rank's shard
      if ((warm >= STEPS)); then
        row "$system" "$size" "$layout" "$geoms" "$WALKERS" "$STEPS" "-" "-" "needs --steps > $warm"; failed=1; continue
      fi
      env_run=(env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" OPENBLAS_NUM_THREADS=1 XLA_PYTHON_CLIENT_PREALLOCATE=false)
      if ((CPU)); then
        env_run+=(JAX_PLATFORMS=cpu)
        used=()
      else
        if ((ranks > ${#GPUS[@]})) && ((DRY == 0)); then
          row "$system" "$size" "$layout" "$geoms" "$WALKERS" "-" "-" "-" "skipped: ${#GPUS[@]} GPU(s)"; continue
        fi
        used=("${GPUS[@]:0:ranks}")
        ((${#used[@]})) || used=($(seq 0 $((ranks - 1))))  # dry run without GPUs: what it would use
        env_run+=(CUDA_VISIBLE_DEVICES="$(IFS=,; echo "${used[*]}")")
      fi
      cmd=("$PYTHON" -m hpcwf run "$dir/job.toml")
      if ((ranks > 1)); then
        [[ -n $MPIEXEC ]] || { row "$system" "$size" "$layout" "$geoms" "$WALKERS" "-" "-" "-" "skipped: no mpiexec"; continue; }
        cmd=("$MPIEXEC" -n "$ranks" "${cmd[@]}")
      fi
      if ((DRY)); then
        echo "would run: ${env_run[*]:1} ${cmd[*]}"
        row "$system" "$size" "$layout" "$geoms" "$WALKERS" "$STEPS" "-" "-" "dry run (job valid)"
        continue
      fi
      sampler=""
      if ((${#used[@]})); then
        nvidia-smi --query-gpu=index,uuid,memory.used --format=csv,noheader,nounits >"$dir/mem_before.csv"
        nvidia-smi --query-gpu=index,uuid,memory.used --format=csv,noheader,nounits -lms 100 >"$dir/mem.csv" &
        sampler=$!
      fi
      echo "running $system $size $layout ..." >&2
      status=ok
      "${env_run[@]}" "${cmd[@]}" >"$dir/stdout.log" 2>"$dir/stderr.log" || status="failed (exit $?, $dir/stderr.log)"
      peak="-"
      if [[ -n $sampler ]]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        peak=$(peak_mib "$dir/mem.csv" "$dir/mem_before.csv" "${used[@]}")
      fi
      if [[ $status == ok ]]; then
        read -r sps n <<<"$(s_per_step "$dir/run" "$warm")"
        row "$system" "$size" "$layout" "$geoms" "$WALKERS" "$n" "$sps" "$peak" ok
      else
        row "$system" "$size" "$layout" "$geoms" "$WALKERS" "-" "-" "$peak" "$status"; failed=1
      fi
    done
  done
done
echo
printf '%s\n' "${ROWS[@]}"
exit "$failed"
