"""`lora-pipeline`: the command line (CONTRACT section 6).

Exit codes: 0 done (findings are not failures), 1 the work failed (and `diagnose --fail-on LEVEL`: a
selected checkpoint reached LEVEL), 2 bad usage or bad config, 130 / 143 interrupted by SIGINT /
SIGTERM, each failure as one line naming the file, key or argument, never a bare traceback.
Nothing heavy is imported here: each command's module imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module under lora_pipeline.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo_cmd", "build the demo workspace and run the whole asset graph on it"),
    "evaluate": ("evaluate_cmd", "materialize what is missing or stale for runs and checkpoints"),
    "backfill": ("backfill_cmd", "queue a Dagster backfill of checkpoint_job for the daemon (the UI's) to run"),
    "diagnose": ("diagnose_cmd", "print the findings of the latest reports (--fail-on: gate a release)"),
    "trace": ("trace_cmd", "walk back from a render to its checkpoint, run, snapshot and source files"),
    "review": ("review_cmd", "append a review decision for a run or checkpoint (its reports updated)"),
    "check-dataset": ("check_dataset_cmd", "run the dataset checks on a folder (no config, no Dagster)"),
    "inspect": ("inspect_cmd", "show a LoRA file's format, metadata, ranks, norms and likely base"),
    "toy-base": ("toy_base_cmd", "write a tiny random-weight model of a family: sd1, sdxl, sd3, flux1, flux2 (diffusers folder)"),
    "toy-train": ("toy_train_cmd", "train a real LoRA with peft and write a run folder"),
    "ui": ("ui_cmd", "open the Dagster UI (127.0.0.1) on the instance the CLI uses"),
    "env": ("env_cmd", "print export lines (DAGSTER_HOME, config, workspace) for the dagster CLI: "
                       'eval "$(lora-pipeline env)"'),
}


class UsageError(Exception):
    """Bad usage: exit 2 with this one-line message."""


class WorkFailed(Exception):
    """The work failed: exit 1 with this one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + traceback
        raise UsageError(f"{self.prog}: {message}")


def _available() -> dict[str, object]:
    mods = {}
    for name, (mod, _) in COMMANDS.items():
        try:
            mods[name] = importlib.import_module(f"lora_pipeline.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"lora_pipeline.commands.{mod}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (else $LORA_PIPELINE_CONFIG, ./lora_pipeline.yaml, the demo default)")
    parser = _Parser(prog="lora-pipeline", parents=[common],
                     description="Prove the evaluation path of diffusion LoRAs, then judge them.")
    from lora_pipeline import __version__

    parser.add_argument("--version", action="version", version=f"lora-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _available().items():
        p = sub.add_parser(name, parents=[common], help=COMMANDS[name][1], description=COMMANDS[name][1])
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lora_pipeline.config import ConfigError

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help(sys.stderr)
            return 2
        if not hasattr(args, "config"):
            args.config = None
        return int(args._run(args) or 0)
    except (UsageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C (130); the launcher raises a subclass for SIGTERM too (143)
        code = int(getattr(e, "exit_code", 130))
        print(f"error: interrupted ({'SIGTERM' if code == 143 else 'SIGINT'}); stopped at once", file=sys.stderr)
        return code


if __name__ == "__main__":  # `python -m lora_pipeline.cli`: run the module the commands import, so the
    from lora_pipeline import cli  # UsageError / WorkFailed they raise are the classes main() catches

    sys.exit(cli.main())
