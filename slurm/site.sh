# hpcwf site settings: the ONE place to adapt the slurm/ scripts to a cluster.
#
# Used twice:
#  1. At submission: `source slurm/site.sh` in your shell (or ~/.bashrc) exports the SBATCH_*
#     variables below, which sbatch reads like command-line options (sbatch's own options on
#     the command line still win). Nothing cluster-specific is written as #SBATCH in the scripts.
#  2. At run time: every slurm/*.sbatch script sources this file again for modules, the Python
#     environment and the MPI launcher.
# Every setting can also be given as an environment variable of the same name; the values here
# are only defaults (`: "${X:=default}"` keeps a value that is already set).

# ---- submission (exported as SBATCH_* when set) ----------------------------------------------
: "${HPCWF_ACCOUNT:=}"            # sbatch --account; "" = your default account
: "${HPCWF_PARTITION:=}"          # sbatch --partition; "" = the cluster's default partition
: "${HPCWF_QOS:=}"                # sbatch --qos; "" = default
: "${HPCWF_GPUS_PER_RANK:=0}"     # GPUs per MPI rank (sbatch --gpus-per-task): 1 on GPU clusters
                                  # (one rank per GPU: `sbatch --ntasks=16` = 16 GPUs, packed onto
                                  # nodes by SLURM, e.g. 4 nodes of 4 GPUs); 0 = CPU nodes
: "${HPCWF_TIME_LIMIT:=}"         # sbatch --time for every script, e.g. "24:00:00"; "" = script default

# ---- run time ---------------------------------------------------------------------------------
: "${HPCWF_MODULES:=}"            # modules to load, e.g. "cuda/12.4 cudnn"; "" = none
: "${HPCWF_VENV:=}"               # virtualenv to activate; "" = <hpcwf checkout>/.venv when it exists
# Launcher: srun needs a PMI the MPI library understands (the mpich wheel: --mpi=pmi2).
: "${HPCWF_LAUNCHER:=srun --mpi=pmi2}"
# Seconds between SLURM's warning signal (SIGUSR1) and the time limit: enough for the running
# step to finish and the checkpoint to be written on a busy file system.
: "${HPCWF_SIGNAL_SECONDS:=600}"

[ -n "$HPCWF_ACCOUNT" ] && export SBATCH_ACCOUNT="$HPCWF_ACCOUNT"
[ -n "$HPCWF_PARTITION" ] && export SBATCH_PARTITION="$HPCWF_PARTITION"
[ -n "$HPCWF_QOS" ] && export SBATCH_QOS="$HPCWF_QOS"
[ -n "$HPCWF_TIME_LIMIT" ] && export SBATCH_TIMELIMIT="$HPCWF_TIME_LIMIT"
[ "$HPCWF_GPUS_PER_RANK" -gt 0 ] && export SBATCH_GPUS_PER_TASK="$HPCWF_GPUS_PER_RANK"
export SBATCH_SIGNAL="USR1@${HPCWF_SIGNAL_SECONDS}"  # overrides the scripts' #SBATCH --signal
export HPCWF_ACCOUNT HPCWF_PARTITION HPCWF_QOS HPCWF_GPUS_PER_RANK HPCWF_TIME_LIMIT HPCWF_MODULES \
    HPCWF_VENV HPCWF_LAUNCHER HPCWF_SIGNAL_SECONDS

# Called by the scripts inside the job, before hpcwf starts: load modules, activate Python.
hpcwf_site_setup() {
    if [ -n "$HPCWF_MODULES" ]; then
        # shellcheck disable=SC2086
        module load $HPCWF_MODULES || return 1
    fi
    local venv="${HPCWF_VENV:-$HPCWF_HOME/.venv}"
    if [ -f "$venv/bin/activate" ]; then
        # shellcheck disable=SC1091
        . "$venv/bin/activate"
    fi
    export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
}
