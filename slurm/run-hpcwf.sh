# Shared body of the slurm/*.sbatch scripts (sourced, not run): finds the hpcwf checkout,
# applies slurm/site.sh, launches `hpcwf run` on every rank and requeues the job when hpcwf
# stopped at SLURM's warning signal with a checkpoint.
#
# Exit codes of hpcwf (docs: README "Running on a cluster"): 0 done, 2 bad input, 3 diverged
# (checkpoint of the last good state), 74 a checkpoint could not be written (disk full),
# 75 stopped by a signal after writing a checkpoint.
# Only 75 requeues, and only when the run made progress since this job started, so a job
# that cannot advance (e.g. the signal comes before the first checkpoint) does not loop.

EXIT_INTERRUPTED=75
HPCWF_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HPCWF_HOME

hpcwf_log() { echo "[hpcwf-slurm $(date '+%F %T')] $*"; }

# Newest checkpoint step of a run dir (0 when none), from the file names alone.
hpcwf_checkpoint_step() {
    local newest
    newest=$(ls "$1"/checkpoints/ckpt_*.h5 2>/dev/null | sort | tail -n1)
    [ -z "$newest" ] && { echo 0; return; }
    newest=${newest##*/ckpt_}
    echo $((10#${newest%.h5}))
}

# hpcwf_run RUN_DIR HPCWF_ARGS...: runs `hpcwf run HPCWF_ARGS` on all ranks of the job, then
# requeues the job if hpcwf was interrupted by a signal after making progress. Returns hpcwf's
# exit code (0 after a requeue: the job itself did what it should).
hpcwf_run() {
    local run_dir=$1
    shift
    local before
    before=$(hpcwf_checkpoint_step "$run_dir")
    hpcwf_log "job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NUM_NODES} node(s):" \
        "${SLURM_NTASKS} ranks; run dir ${run_dir} at checkpoint step ${before}"
    # One rank per task of the allocation, each with its own GPUs (--gpus-per-task, site.sh).
    # shellcheck disable=SC2086
    $HPCWF_LAUNCHER hpcwf run "$@"
    local rc=$?
    local after
    after=$(hpcwf_checkpoint_step "$run_dir")
    if [ "$rc" -eq "$EXIT_INTERRUPTED" ]; then
        # An array task is named ARRAYID_TASK: SLURM_JOB_ID alone may name the whole array.
        local self=$SLURM_JOB_ID
        [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && self="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
        if [ "$after" -gt "$before" ]; then
            hpcwf_log "stopped at checkpoint step ${after}; requeueing job ${self}"
            scontrol requeue "$self" && return 0
            hpcwf_log "error: scontrol requeue failed; resubmit by hand to continue from step ${after}"
        else
            hpcwf_log "stopped without progress (checkpoint step ${after}); not requeueing"
        fi
    fi
    hpcwf_log "hpcwf exited with code ${rc} (checkpoint step ${after})"
    return "$rc"
}

hpcwf_setup() {
    # shellcheck disable=SC1091
    . "$HPCWF_HOME/slurm/site.sh"
    hpcwf_site_setup || { hpcwf_log "error: site setup failed (slurm/site.sh)"; return 1; }
    command -v hpcwf >/dev/null || { hpcwf_log "error: hpcwf not on PATH (HPCWF_VENV in slurm/site.sh)"; return 1; }
}
