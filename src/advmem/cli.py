"""The `advmem` command.

Exit codes: 0 success, 2 bad input (one line, no traceback; `--debug` shows it), 1 failure at
run time, 130 / 143 stopped cleanly by SIGINT / SIGTERM (resume with `advmem train --resume RUN`),
141 when the reader of the output went away (`advmem recipes | head`: quietly, as SIGPIPE would).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from advmem.version import __version__
from advmem.commands import COMMANDS
from advmem.errors import Interrupted, RunFailure, UserError
from advmem.engine.rundir import RunDir
from advmem.evaluation.cli import add_eval_arguments, run_eval
from advmem.plugins import installed_plugins


class Parser(argparse.ArgumentParser):
    """argparse that raises UserError (exit 2, one line) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


# -------------------------------------------------------------------------------------------
# train / demo


@COMMANDS.register("train")
def add_train(sub, common) -> None:
    p = sub.add_parser("train", help="train from a recipe", description="Train from a recipe into runs/<name>/.")
    p.add_argument("recipe", nargs="?", help="recipe file or shipped recipe name (see 'advmem recipes')")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a recipe value (repeatable)")
    p.add_argument("--name", help="run name (directory under output_root)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN after its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory of the same name")
    common(p)
    p.set_defaults(func=cmd_train)


@COMMANDS.register("eval")
def add_eval(sub, common) -> None:
    p = sub.add_parser("eval", help="evaluate a run or checkpoint",
                       description="Evaluate a run (best and last checkpoints) or one checkpoint.")
    add_eval_arguments(p)
    common(p)
    p.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    # torch: only when a run trains; pydantic: not for --help
    from advmem.training import train
    from advmem.recipe import load_recipe

    if args.resume:
        # pydantic: not for --help
        from advmem.recipe import RESUME_SETTABLE

        run = RunDir(args.resume)
        if args.recipe is not None or args.name is not None or args.overwrite:
            raise UserError("--resume continues a run as recorded; do not pass a recipe, --name or --overwrite with it")
        fixed = [s for s in args.set or [] if s.split("=", 1)[0].strip() not in RESUME_SETTABLE]
        if fixed:
            raise UserError(f"--set {fixed[0]} cannot change a run being resumed; only {', '.join(RESUME_SETTABLE)} can "
                            "(start a new run for other changes)")
        run.check_start(resume=True, overwrite=False)
        recipe = run.load_recipe(list(args.set or []))
        run_dir, summary = train(recipe, run_path=run.path, resume=True, quiet=args.quiet)  # in DIR, even if copied or moved
    else:
        if args.recipe is None:
            raise UserError("advmem train: a recipe is required, e.g. 'advmem train recipes/quickstart.yaml' "
                            "(or --resume runs/NAME)")
        overrides = list(args.set or [])
        if args.name is not None:
            if not args.name.strip():
                raise UserError("--name is empty; give the run a name (letters, digits, '.', '_', '-'), "
                                "or leave --name out to use the recipe's")
            overrides.append(f"name={args.name}")
        recipe = load_recipe(args.recipe, overrides)
        # pydantic: not for --help
        from advmem.recipe import recipe_warnings

        for warning in recipe_warnings(recipe):
            print(f"advmem train: warning: {warning}", file=sys.stderr)
        run_dir, summary = train(recipe, overwrite=args.overwrite, quiet=args.quiet)
    if summary:  # empty on DDP ranks other than 0
        print_summary(run_dir.path, summary)
    return 0


@COMMANDS.register("demo")
def add_demo(sub, common) -> None:
    p = sub.add_parser("demo", help="run the quickstart recipe (a few minutes on CPU)",
                       description="PGD-AT on a Fashion-MNIST subset with small_cnn; prints best/last and writes curves.png.")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a recipe value")
    common(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    # torch: only when a run trains; pydantic: not for --help
    from advmem.training import train
    from advmem.recipe import load_recipe

    recipe = load_recipe("quickstart", list(args.set or []))
    root = Path(recipe.output_root)
    name, k = recipe.name, 1
    while (root / name).exists():
        k += 1
        name = f"{recipe.name}-{k}"
    recipe = recipe.model_copy(update={"name": name})
    print(f"advmem demo: PGD-AT on a Fashion-MNIST subset with {recipe.model.name}; run directory {root / name}",
          file=sys.stderr)
    run_dir, summary = train(recipe, quiet=args.quiet)
    print_summary(run_dir.path, summary)
    return 0


def print_summary(path: Path, summary: dict[str, Any]) -> None:
    print(f"\nrun: {path}   (best selected on {summary.get('best_selected_on')})")
    full = any("test_full_nat_acc" in (summary.get(label) or {}) for label in ("best", "last"))
    splits = ("train", "val", "test") + (("test_full",) if full else ())  # test_full: the last epoch, whole test set
    header = f"{'checkpoint':<12}{'epoch':>6}" + "".join(f"{s + ' nat':>{len(s) + 6}}{s + ' rob':>{len(s) + 6}}"
                                                         for s in splits)
    print(header)
    for label in ("best", "last"):
        row = summary.get(label) or {}
        cells = [f"{label:<12}{row.get('epoch', '-'):>6}"]
        for s in splits:
            for k in ("nat_acc", "rob_acc"):
                v = row.get(f"{s}_{k}")
                cells.append(f"{100 * v:>{len(s) + 5}.1f}%" if v is not None else f"{'-':>{len(s) + 6}}")
        print("".join(cells))
    print(f"curves: {path / 'curves.png'}   metrics: {path / 'metrics.csv'}")


# -------------------------------------------------------------------------------------------
# eval


def cmd_eval(args: argparse.Namespace) -> int:
    return run_eval(args)


# -------------------------------------------------------------------------------------------
# recipes / info


@COMMANDS.register("recipes")
def add_recipes(sub, common) -> None:
    p = sub.add_parser("recipes", help="list shipped recipes",
                       description="List shipped recipes: name, path and the whole description.")
    common(p)
    p.set_defaults(func=cmd_recipes)


def cmd_recipes(args: argparse.Namespace) -> int:
    """Each shipped recipe's name and path, then its whole description wrapped to the terminal."""
    import shutil
    import textwrap

    import yaml

    # pydantic: not for --help
    from advmem.recipe import shipped_recipes

    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    for name, path in shipped_recipes().items():
        try:
            desc = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            desc = "(unreadable)"
        try:
            shown = path.relative_to(Path.cwd())
        except ValueError:
            shown = path
        print(f"{name}  ({shown})")
        for line in textwrap.wrap(" ".join(str(desc or "(no description)").split()), width=width - 4,
                                  break_on_hyphens=False, break_long_words=False):
            print(f"    {line}")
    return 0


@COMMANDS.register("info")
def add_info(sub, common) -> None:
    p = sub.add_parser("info", help="versions, device, datasets found", description="Versions, device and datasets found.")
    p.add_argument("--data-root", default=None, help="also search this directory for datasets")
    common(p)
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    # numpy and pydantic: only for `advmem info`
    from advmem.data import DataConfig, find_dataset_files

    info = {
        "advmem": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
        "datasets": find_dataset_files(DataConfig(data_root=args.data_root)),
        # installed advmem plugins (listed, not imported: a recipe loads one by naming it in plugins:)
        "plugins": {name: ep.value for name, ep in sorted(installed_plugins().items())},
    }
    for mod in ("safetensors", "pydantic", "numpy", "pyautoattack", "pyarrow", "sklearn"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "installed")
        except ImportError:
            info[mod] = "not installed"
    print(json.dumps(info, indent=2, default=str))
    return 0


# -------------------------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(prog="advmem", description="Adversarial training and the study of memorization in it.")
    parser.add_argument("--version", action="version", version=f"advmem {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
        p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")

    for name in COMMANDS:  # registration order: cli.py's own, then commands.MODULES
        COMMANDS.get(name)(sub, common)
    return parser


def _one_line(err: BaseException) -> str:
    return str(err).replace("\r", "\\r").replace("\n", "\\n")


def _closed_pipe() -> int:
    """The reader of our output went away (`advmem recipes | head`): stop quietly, as a tool killed by
    SIGPIPE does (exit 141), with stdout and stderr pointed at /dev/null so the flush at interpreter
    exit does not print a BrokenPipeError of its own. SIGPIPE itself stays ignored (Python's default):
    it would kill a training run without its clean stop."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError):  # a stream without a file descriptor (a test's StringIO)
            pass
    os.close(devnull)
    return 141


def main(argv: list[str] | None = None) -> int:
    """Run one command; a closed pipe on our output (also under --help) is a quiet exit 141."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # here, so a closed pipe is caught below and not reported at interpreter exit
    except BrokenPipeError:
        return _closed_pipe()


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        func = getattr(args, "func", None)
        if func is None:
            raise UserError(f"advmem {args.command}: choose a subcommand (see 'advmem {args.command} --help')")
        return func(args)
    except UserError as err:
        if debug:
            traceback.print_exc()
        print(f"advmem: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except RunFailure as err:
        if debug:
            traceback.print_exc()
        print(f"advmem: failed: {_one_line(err)}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"advmem: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if debug:
            traceback.print_exc()
        print(f"advmem: failed: disk full ({err.strerror}) while writing {err.filename or 'a file'}; files advmem "
              "writes are replaced atomically, so none is torn; free space and run the command again", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("advmem: interrupted (files in the run directory are written atomically; "
              "resume a training run with 'advmem train --resume RUN')", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
