# Shared body of the slurm/*.sbatch scripts (sourced, not run): finds the hpcwf checkout,
# applies slurm/site.sh, launches `hpcwf run` on every rank and requeues the job when hpcwf
# stopped at SLURM's warning signal with a checkpoint.
#
# Exit codes of hpcwf (docs: README "Running on a cluster"): 0 done, 2 bad input, 3 diverged
# (checkpoint of the last good state), 74 a checkpoint could not be written (disk full),
# 75 stopped by a signal (after writing a checkpoint, or in start-up/HF with nothing to save).
# Only a stop requeues, and only when this run made progress (progress.toml: a checkpoint
# beyond the step it resumed from, or new HF results), so a job that cannot advance (e.g. the
# signal comes before the first checkpoint) does not loop.

EXIT_INTERRUPTED=75
HPCWF_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HPCWF_HOME

hpcwf_log() { echo "[hpcwf-slurm $(date '+%F %T')] $*"; }

# Newest checkpoint step of a run dir (0 when none), from the file names alone: for the log
# only (after a --restart from an older checkpoint the newest name may belong to an abandoned
# branch; the requeue decision reads progress.toml instead).
hpcwf_checkpoint_step() {
    local newest
    newest=$(ls "$1"/checkpoints/ckpt_*.h5 2>/dev/null | sort | tail -n1)
    [ -z "$newest" ] && { echo 0; return; }
    newest=${newest##*/ckpt_}
    echo $((10#${newest%.h5}))
}

# hpcwf_progress RUN_DIR KEY DEFAULT: a value of RUN_DIR/progress.toml, which `hpcwf run`
# writes (hpcwf/io/progress.py): resumed_from, checkpoint_step, checkpoint, hf_stored.
hpcwf_progress() {
    local value
    value=$(sed -n "s/^$2 = //p" "$1/progress.toml" 2>/dev/null | head -n1)
    value=${value#\"}
    value=${value%\"}
    echo "${value:-$3}"
}

# hpcwf_job JOB [hpcwf run options]: the body of the sbatch scripts. Runs `hpcwf run` with
# these options on all ranks, into the run dir that `hpcwf check` names for the same options
# (--output-dir and --group-index included), and requeues the job when hpcwf was stopped
# after making progress.
hpcwf_job() {
    local run_dir
    run_dir=$(hpcwf check "$@" --run-dir) || return 2
    hpcwf_requeue_options "$run_dir" "$@"
    hpcwf_run "$run_dir" "${HPCWF_OPTIONS[@]}"
}

# hpcwf_requeue_options RUN_DIR OPTIONS...: sets HPCWF_OPTIONS to the hpcwf run options of this
# allocation. --restart CKPT is an option of the job's first run only: a requeued job
# (SLURM_RESTART_COUNT > 0) continues where its previous run got, the checkpoint named in
# progress.toml (without one: the newest valid checkpoint). Passed again, --restart made every
# allocation start over from the same old checkpoint, throwing away the previous one's work.
hpcwf_requeue_options() {
    local run_dir=$1
    shift
    HPCWF_OPTIONS=()
    if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ]; then
        HPCWF_OPTIONS=("$@")
        return
    fi
    local own given option
    own=$(hpcwf_progress "$run_dir" checkpoint "")
    while [ $# -gt 0 ]; do
        option=${1%%=*}
        # `hpcwf run` takes any unambiguous prefix of an option (--rest): --r is the shortest.
        case $option in
            --r | --re | --res | --rest | --resta | --restar | --restart) ;;
            *)
                HPCWF_OPTIONS+=("$1")
                shift
                continue
                ;;
        esac
        if [ "$option" = "$1" ]; then
            given=${2-}
            shift $(($# > 1 ? 2 : 1))
        else
            given=${1#*=}
            shift
        fi
        if [ -n "$own" ]; then
            hpcwf_log "requeued: --restart ${given} (first run only) replaced by ${own}, where the previous run got"
            HPCWF_OPTIONS+=(--restart "$own")
        else
            hpcwf_log "requeued: --restart ${given} (first run only) dropped; resuming from the newest valid checkpoint"
        fi
    done
}

# hpcwf_run RUN_DIR HPCWF_ARGS...: runs `hpcwf run HPCWF_ARGS` on all ranks of the job, then
# requeues the job if hpcwf was stopped by a signal after making progress: this run wrote a
# checkpoint beyond the step it resumed from, or stored HF results (progress.toml). Returns
# hpcwf's exit code (0 after a requeue: the job itself did what it should).
hpcwf_run() {
    local run_dir=$1
    shift
    hpcwf_log "job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NUM_NODES} node(s):" \
        "${SLURM_NTASKS} ranks; run dir ${run_dir}, newest checkpoint step $(hpcwf_checkpoint_step "$run_dir")"
    rm -f "$run_dir/progress.toml"  # the one read below is this run's
    # One rank per task of the allocation, each with its own GPUs (--gpus-per-task, site.sh).
    # shellcheck disable=SC2086
    $HPCWF_LAUNCHER hpcwf run "$@"
    local rc=$?
    local stopped=0 signal=""
    [ "$rc" -eq "$EXIT_INTERRUPTED" ] && stopped=1
    if [ "$rc" -gt 128 ]; then
        signal=$(kill -l $((rc - 128)) 2>/dev/null)
        case $signal in
            USR1 | TERM | INT)
                # Only before hpcwf installs its handler (interpreter start-up) does a stop
                # signal kill it: there was nothing to checkpoint yet.
                hpcwf_log "hpcwf was stopped by SIG${signal} during its start-up, before it handles signals:" \
                    "nothing to checkpoint"
                stopped=1
                ;;
        esac
    fi
    local resumed reached hf
    resumed=$(hpcwf_progress "$run_dir" resumed_from "")
    reached=$(hpcwf_progress "$run_dir" checkpoint_step -1)
    hf=$(hpcwf_progress "$run_dir" hf_stored 0)
    if [ "$stopped" -eq 1 ]; then
        # An array task is named ARRAYID_TASK: SLURM_JOB_ID alone may name the whole array.
        local self=$SLURM_JOB_ID
        [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && self="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
        local made=""
        if [ -n "$resumed" ] && [ "$reached" -gt "$resumed" ]; then
            made="checkpoint step ${reached}, resumed from step ${resumed}"
        elif [ -n "$resumed" ] && [ "$hf" -gt 0 ]; then
            made="${hf} new HF results stored"
        fi
        if [ -n "$made" ]; then
            hpcwf_log "stopped with progress (${made}); requeueing job ${self}"
            scontrol requeue "$self" && return 0
            hpcwf_log "error: scontrol requeue failed; resubmit by hand to continue"
        else
            hpcwf_log "stopped without progress (no checkpoint beyond step ${resumed:-?}, no new HF result); not requeueing"
        fi
    fi
    hpcwf_log "hpcwf exited with code ${rc} (checkpoint step ${reached} of this run)"
    return "$rc"
}

hpcwf_setup() {
    # shellcheck disable=SC1091
    . "$HPCWF_HOME/slurm/site.sh"
    hpcwf_site_setup || { hpcwf_log "error: site setup failed (slurm/site.sh)"; return 1; }
    command -v hpcwf >/dev/null || { hpcwf_log "error: hpcwf not on PATH (HPCWF_VENV in slurm/site.sh)"; return 1; }
}
