"""Command line: `hpcwf run JOB.toml`, `hpcwf check JOB.toml`, `hpcwf groups JOB.toml`,
`hpcwf analyze RUN_DIR [--json|--csv]`, `hpcwf plot RUN_DIR`, `hpcwf compare RUN_DIR... [--json|--csv]`,
`hpcwf inspect CKPT.h5`.

analyze, plot and compare read only `<run_dir>/energies.h5` (h5py, numpy, matplotlib; no jax,
no mpi4py), so they run on login nodes, also on a run that is still training (docs/analysis.md).

Bad input prints one line `error: <file>: <key>: <what is wrong>` and exits with code 2.
Under MPI (`mpiexec -n N hpcwf run ...`) only rank 0 prints; a failure that every rank meets
(bad input, a stop signal, divergence, a checkpoint that cannot be written) exits every rank
with its code, and a failure of a single rank aborts the whole job (MPI_Abort) instead of
leaving the others waiting. A full disk or quota gives one `error:` line and exit code 74.
"""

from __future__ import annotations

# Importing hpcwf (for this module, hpcwf/__init__.py) has set the environment defaults
# (OPENBLAS_NUM_THREADS, XLA_FLAGS) before numpy or jax start: hpcwf/process_defaults.py.
import argparse
import errno
import os
import signal
import sys

from hpcwf.errors import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_STORAGE,
    InputError,
    RunDivergedError,
    RunInterruptedError,
    StorageError,
)
from hpcwf.signals import StopFlag

# errno values of a full disk, an exhausted quota and a file size limit (RLIMIT_FSIZE).
_STORAGE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name)
)


def _selected_job(args):
    """The job of `run`/`check` as it will run: --output-dir D, then --group-index K (an
    array task K writes into D/<group K>, not all tasks into D); `load_job` checks `[init]`
    against that final run dir."""
    from hpcwf.io.config import load_job

    return load_job(args.job, group_index=args.group_index, output_dir=getattr(args, "output_dir", None))


def _run(args) -> int:
    from hpcwf.analysis.report import format_table, geometry_results

    cfg = _selected_job(args)
    from hpcwf.workflow import run_job  # jax is imported only now, after the input is valid

    out = run_job(cfg, restart=args.restart, stop=args.stop)
    if _rank() == 0:
        print(format_table(geometry_results(out)))
    return 0


def _check(args) -> int:
    from hpcwf.io.config import geometry_groups
    from hpcwf.models import is_model_reference, shipped_model

    cfg = _selected_job(args)
    if args.run_dir:
        print(cfg.output.dir)
        return 0
    o = cfg.optimization
    print(
        f"ok: {args.job}: {len(cfg.geometries)} geometries in {len(geometry_groups(cfg))} groups, "
        f"model {cfg.model.size}/{cfg.model.orbitals}, {o.steps} steps x {o.batch_size} walkers "
        f"({o.optimizer}, schedule {o.schedule}), run dir {cfg.output.dir}"
    )
    if is_model_reference(cfg.init.checkpoint):
        model = shipped_model(cfg.init.checkpoint)
        md = model.metadata
        print(
            f"init: model {model.name} ({cfg.init.mode}): {md.get('optimization_steps', '?')} VMC steps on "
            f"{md.get('training_set', '?')}; card {model.card_path}"
        )
    return 0


def _groups(args) -> int:
    from hpcwf.io.config import geometry_groups, load_job

    cfg = load_job(args.job)
    for i, group in enumerate(geometry_groups(cfg)):
        n = sum(m.group_name == group for m in cfg.geometries)
        print(f"{i:>4}  {group}  ({n} geometries)")
    return 0


def _analyze(args) -> int:
    from hpcwf.analysis.report import format_table, geometry_results, to_csv, to_json

    rows = geometry_results(args.run_dir)
    if args.csv:
        sys.stdout.write(to_csv(rows))
    else:
        print(to_json(rows) if args.json else format_table(rows))
    return 0


def _plot(args) -> int:
    from hpcwf.analysis.plots import plot_run

    for path in plot_run(args.run_dir, log=print):
        print(path)
    return 0


def _compare(args) -> int:
    from hpcwf.analysis.compare import compare_runs, format_table, to_csv, to_json

    comparison = compare_runs(args.run_dirs)
    if args.csv:
        sys.stdout.write(to_csv(comparison))
    else:
        print(to_json(comparison) if args.json else format_table(comparison))
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The job file and the options of `hpcwf run` (shared with `hpcwf check`)."""
    parser.add_argument("job", help="job TOML file")
    parser.add_argument("--output-dir", help="override [output] dir")
    parser.add_argument(
        "--restart", metavar="CKPT", help="resume from this checkpoint (default: newest valid)"
    )
    parser.add_argument(
        "--group-index",
        type=int,
        metavar="K",
        help="only the K-th geometry group (see `hpcwf groups`), into <output dir>/<group>",
    )


def _add_format_options(parser: argparse.ArgumentParser) -> None:
    """--json | --csv (default: a text table)."""
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    fmt.add_argument("--csv", action="store_true", help="CSV output (header line, one line per geometry)")


def _inspect(args) -> int:
    import json

    from hpcwf.io.checkpoint import FORMAT_PARAMS, read_checkpoint_summary

    summary = read_checkpoint_summary(args.checkpoint)
    if summary.get("format") == FORMAT_PARAMS:
        # A parameter file (checkpoints/params.h5, a documented output) has no checksum to
        # verify: nothing is wrong with it.
        del summary["checksum_ok"], summary["checksum_error"]
        summary["checksum"] = "none (parameter file)"
    for key, value in summary.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        print(f"{key:<16} {text}")
    if summary.get("format") != FORMAT_PARAMS and not summary.get("checksum_ok"):
        print(f"error: {args.checkpoint}: checksum: {summary.get('checksum_error')}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _models(args) -> int:
    from hpcwf.models import models_table, shipped_models

    models = shipped_models()
    if not models:
        print("no models shipped with this hpcwf")
        return 0
    print(models_table(models))
    print('\nstart a job from one with [init] checkpoint = "model:NAME"; its card says how it was trained')
    return 0


def _line_buffered_stdout() -> None:
    """Every line of stdout reaches its file when printed. Redirected to a file (SLURM's .out)
    Python buffers stdout in 8 KiB blocks: a run's progress lines showed up in chunks, long
    after they were printed, and a kill (OOM, time limit) lost the last ones."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # absent on a replaced sys.stdout
    if reconfigure is not None:
        reconfigure(line_buffering=True)


def main(argv: list[str] | None = None) -> int:
    _line_buffered_stdout()
    parser = argparse.ArgumentParser(prog="hpcwf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a job (HF, pre-training, VMC, evaluation)")
    _add_run_options(p_run)
    p_run.set_defaults(func=_run)
    # check takes run's options, so `hpcwf check JOB [run options] --run-dir` names the run dir
    # that `hpcwf run JOB [run options]` writes (the slurm/ scripts rely on it).
    p_ck = sub.add_parser("check", help="validate a job file (no jax, nothing written) and summarize it")
    _add_run_options(p_ck)
    p_ck.add_argument("--run-dir", action="store_true", help="print only the run directory")
    p_ck.set_defaults(func=_check)
    p_gr = sub.add_parser("groups", help="list a job's geometry groups (tasks of a job array)")
    p_gr.add_argument("job", help="job TOML file")
    p_gr.set_defaults(func=_groups)
    p_an = sub.add_parser(
        "analyze", help="per-geometry energies +- error vs reference of a run directory (also a live run)"
    )
    p_an.add_argument("run_dir")
    _add_format_options(p_an)
    p_an.set_defaults(func=_analyze)
    p_pl = sub.add_parser("plot", help="write PNG figures of a run into its run directory")
    p_pl.add_argument("run_dir")
    p_pl.set_defaults(func=_plot)
    p_cm = sub.add_parser("compare", help="several runs side by side, geometries matched by name")
    p_cm.add_argument("run_dirs", nargs="+", metavar="run_dir")
    _add_format_options(p_cm)
    p_cm.set_defaults(func=_compare)
    p_in = sub.add_parser("inspect", help="summary of a checkpoint file, with checksum verification")
    p_in.add_argument("checkpoint")
    p_in.set_defaults(func=_inspect)
    p_md = sub.add_parser("models", help="list the pre-trained models shipped with hpcwf ([init] checkpoint)")
    p_md.set_defaults(func=_models)
    args = parser.parse_args(argv)
    # `run` handles stop signals from here on, before jax is imported (hpcwf.signals): a
    # signal during start-up or HF exits 75 with one line instead of dying of SIGUSR1's
    # default action, and Ctrl-C is a stop like SIGTERM.
    args.stop = StopFlag().install() if args.command == "run" else None
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`hpcwf analyze RUN | head`): end quietly, as `cat` does. Point
        # stdout at /dev/null so that the flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # Ctrl-C outside `run` (which handles it): no traceback
    except InputError as err:
        return _collective_exit(f"error: {err}", EXIT_BAD_INPUT)
    except RunInterruptedError as err:
        return _collective_exit(f"interrupted: {err}", EXIT_INTERRUPTED)
    except RunDivergedError as err:
        return _collective_exit(f"error: {err}", EXIT_DIVERGED)
    except StorageError as err:
        return _collective_exit(f"error: {err}", EXIT_STORAGE)
    except Exception as err:
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS:
            # Out of space outside a checkpoint write (log, parameters): no traceback either.
            where = err.filename or "a file of the run"
            return _collective_exit(
                f"error: {where}: cannot write ({err.strerror}); free space, then rerun", EXIT_STORAGE
            )
        ctx = _context()
        if ctx is None or ctx.size == 1:
            raise
        import traceback

        traceback.print_exc()
        print(f"error: rank {ctx.rank} failed (traceback above); aborting all ranks", file=sys.stderr)
        ctx.abort(EXIT_FAILED)
        raise


def _context():
    """The parallel context if this process has set one up (no import of jax or mpi4py)."""
    module = sys.modules.get("hpcwf.parallel.context")
    return None if module is None else module._CONTEXT


def _rank() -> int:
    """MPI rank from the context, else from the launcher's environment (before MPI is set up)."""
    ctx = _context()
    if ctx is not None:
        return ctx.rank
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _collective_exit(message: str, code: int) -> int:
    """Exit path for failures every rank meets alike: rank 0 prints, all return `code`. If the
    other ranks do not arrive within a minute (the failure was this rank's alone), abort."""
    ctx = _context()
    if _rank() == 0:
        print(message, file=sys.stderr)
    if ctx is not None and ctx.size > 1 and not ctx.agree_to_stop():
        if ctx.rank != 0:
            print(f"rank {ctx.rank}: {message}", file=sys.stderr)
        ctx.abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
