"""`sf-hf`: the command line of sf_hf, a thin layer over `sf_hf.scripts` (training) and `sf_hf.pipeline`.

    sf-hf recipes [NAME]                # the bundled recipes and accelerate configs; a NAME's file, to copy
    sf-hf pretrain [--config NAME|RECIPE.yaml] [--accelerate-config ddp|zero3|FILE] [--num-processes N] [--max_steps 9]
    sf-hf finetune --config NAME|RECIPE.yaml --model_name_or_path MODEL [...]
    sf-hf evaluate runs/llama-small [--metric next_token_accuracy] [--tasks sf_kjv,hellaswag --limit 100]
    sf-hf convert runs/plain/checkpoint-500 --to x [--output-dir DIR]
    sf-hf card runs/llama-small [--repo-id org/llama-small-sf] [--license apache-2.0] [--output-dir DIR]
    sf-hf push runs/llama-small --repo-id org/llama-small-sf [--license apache-2.0] [--dry-run] [--overwrite]
    sf-hf probe runs/llama-small/checkpoint-500 [--decay-steps 50] [--control] [--output-file probe.json]

Subcommands live in `COMMANDS`; a new one is a `Command` passed to `register` (its parser arguments and a
`run(args) -> exit status`). Pipeline and checkpoint errors, and a training script's bad input (a recipe's value, a
damaged checkpoint to resume), are printed as one line without a traceback and exit with status 1; `-v`/`--verbose`
(every command; `--debug` too, but for the training commands, where `--debug` is `TrainingArguments.debug`) keeps
the traceback.

Flags share one spelling across commands and with the recipes' fields: `--output-dir` for a folder, `--output-file`
for a file, `--dataset-name` / `--dataset-config` / `--text-column` / `--block-size` as in the recipes' YAML. The
older `--output` (convert, probe) and `--dataset` (evaluate, probe) still work, with a warning, until the next release
(`add_renamed_argument`).

The training commands are `sf_hf.scripts.SCRIPTS` (name -> module), each launched through accelerate's own launcher
as `accelerate launch [--config_file FILE] [--num_processes N] -m MODULE ARGS...` would run it (TRL's `trl sft`
does the same): every argument but the launcher's two goes to the script. A new training command (`sft`, `dpo`) is
one more entry in `SCRIPTS`.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from huggingface_hub.utils import disable_progress_bars

from .bundled import (
    ACCELERATE_CONFIGS,
    RECIPES,
    UnknownNameError,
    accelerate_config_names,
    first_comment,
    recipe_names,
    resolve_accelerate_config,
    resolve_recipe,
)
from .pipeline import CheckpointError, PipelineError, RetryPolicy, convert_checkpoint, evaluate_run, push_run
from .pipeline.push import write_cards
from .pipeline.report import summary_rows, to_markdown
from .probe import DEFAULT_TOLERANCE, probe_checkpoint
from .publishing.card import PLACEHOLDER_REPO_ID
from .scripts import SCRIPTS
from .scripts.errors import DEBUG_ENV, one_line
from .scripts.reporting import hide_transformers_bars

LICENSE_HELP = "the model's license, a Hub license id such as apache-2.0 (default: 'unknown', said so on the card)"


@dataclass(frozen=True)
class Command:
    """One `sf-hf` subcommand.

    Attributes:
        name (`str`): what follows `sf-hf`.
        help (`str`): one line for `sf-hf --help`.
        add_arguments (`Callable`): adds the subcommand's arguments to its parser.
        run (`Callable`): `(args) -> exit status`.
        passes_through (`bool`, *optional*, defaults to `False`): arguments the parser does not know are handed
            to `run` as `args.passed_through` (the training commands' script arguments) instead of failing.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passes_through: bool = False


COMMANDS: dict[str, Command] = {}


class _DeprecatedSpelling(argparse.Action):
    """An old spelling of a renamed option: stores into the new option's `dest` and warns."""

    def __init__(self, option_strings, dest, new_spelling: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new_spelling = new_spelling

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"{parser.prog}: warning: option '{option_string}' is deprecated and goes in the next release; use "
            f"'{self.new_spelling}'.",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_renamed_argument(parser: argparse.ArgumentParser, new: str, old: str, **kwargs) -> None:
    """Adds option `new` and, hidden from `--help`, its deprecated spelling `old` (same value; a warning on stderr,
    as Python 3.13's `deprecated=True` prints)."""
    action = parser.add_argument(new, **kwargs)
    parser.add_argument(
        old,
        dest=action.dest,
        action=_DeprecatedSpelling,
        new_spelling=new,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        **{k: v for k, v in kwargs.items() if k in ("type", "choices")},
    )


def register(command: Command) -> Command:
    """Adds a subcommand to `COMMANDS` (a name can be registered once)."""
    if command.name in COMMANDS:
        raise ValueError(f"sf-hf command {command.name!r} is already registered.")
    COMMANDS[command.name] = command
    return command


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the Trainer's output_dir (checkpoint-N folders and the final model)")
    add_renamed_argument(
        parser,
        "--dataset-name",
        "--dataset",
        help="'embedded', a local file/folder or a Hub id (default: run_args.json)",
    )
    parser.add_argument("--dataset-config", help="dataset configuration (default: run_args.json)")
    parser.add_argument("--text-column", help="column with the text (default: run_args.json, else 'text')")
    parser.add_argument("--block-size", type=int, help="tokens per block (default: run_args.json)")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass (default: 8)")
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        help="extra evaluate module: 'next_token_accuracy' or a local .py/folder (repeatable)",
    )
    parser.add_argument("--output-dir", help="where the summary table and plots go (default: RUN_DIR)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument(
        "--tasks",
        action="append",
        default=[],
        help="lm-evaluation-harness tasks: names (sf_kjv offline; hellaswag,arc_easy... with the Hub), "
        "comma-separated, or task YAML files (repeatable; needs pip install 'sf_hf[eval]')",
    )
    parser.add_argument("--include-path", action="append", default=[], help="a folder of task YAML files (repeatable)")
    parser.add_argument("--num-fewshot", type=int, help="few-shot examples per task (default: each task's own)")
    parser.add_argument("--limit", type=float, help="documents per task, a fraction if < 1 (for quick looks only)")
    parser.add_argument(
        "--only",
        action="append",
        help="evaluate only this checkpoint (checkpoint-N or final; "
        "repeatable); the summary keeps the others' earlier results",
    )


def _limit(value: float | None):
    return int(value) if value is not None and value >= 1 else value


def _evaluate(args: argparse.Namespace) -> int:
    if not args.verbose:  # the pipeline draws one bar over checkpoints (x tasks)
        hide_transformers_bars(("Loading weights",))
    evaluation = evaluate_run(
        args.run_dir,
        dataset=args.dataset_name,
        dataset_config=args.dataset_config,
        text_column=args.text_column,
        block_size=args.block_size,
        batch_size=args.batch_size,
        metrics=args.metric,
        output_dir=args.output_dir,
        device=args.device,
        tasks=args.tasks,
        include_path=args.include_path,
        num_fewshot=args.num_fewshot,
        limit=_limit(args.limit),
        verbose=args.verbose,
        only=args.only,
    )
    print(to_markdown(summary_rows(evaluation.results, evaluation.failures)))
    print("Wrote " + ", ".join(str(path) for path in evaluation.files.values()))
    for note in evaluation.notes:
        print(f"sf-hf evaluate: {note}", file=sys.stderr)
    for name, reason in evaluation.failures:
        print(f"sf-hf evaluate: skipped {name}: {reason}", file=sys.stderr)
    task_failures = [
        (r["checkpoint"], task, reason)
        for r in evaluation.results
        for task, reason in r.get("task_failures", {}).items()
    ]
    for name, task, reason in task_failures:
        print(f"sf-hf evaluate: task {task} failed on {name}: {reason}", file=sys.stderr)
    return 1 if evaluation.failures or task_failures else 0


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder (x or y); it is only read")
    parser.add_argument("--to", choices=["x"], default="x", help="the sequence to write (only x)")
    add_renamed_argument(
        parser, "--output-dir", "--output", help="the new folder (default: x-CHECKPOINT beside it); must not exist"
    )


def _convert(args: argparse.Namespace) -> int:
    print(convert_checkpoint(args.checkpoint, args.output_dir))
    return 0


def _push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the Trainer's output_dir; only read")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub (created if needed)")
    parser.add_argument("--token", help="write token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--overwrite", action="store_true", help="replace existing branches and a non-empty main")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list what would go where and write the cards and plots into a preview folder; no network",
    )
    parser.add_argument("--preview-dir", help="the dry run's preview folder (default: a new temporary folder)")
    parser.add_argument(
        "--base-model",
        help="for fine-tunes: the model the run started from (for the card; a PEFT "
        "adapter's pushed adapter_config.json names it: its base model's Hub id)",
    )
    parser.add_argument("--license", help=LICENSE_HELP)
    parser.add_argument("--retries", type=int, default=5, help="tries per Hub call on network errors/5xx (default: 5)")
    parser.add_argument("--retry-delay", type=float, default=1.0, help="first backoff in seconds, doubled (default: 1)")


def _push(args: argparse.Namespace) -> int:
    if not args.verbose:  # the commit list below says what was pushed; the per-file upload bars only with -v
        disable_progress_bars()
    report = push_run(
        args.run_dir,
        args.repo_id,
        token=args.token,
        private=args.private,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
        base_model=args.base_model,
        retry=RetryPolicy(attempts=args.retries, initial_delay=args.retry_delay),
        preview_dir=args.preview_dir,
        license=args.license,
    )
    if args.dry_run:
        print(f"Dry run: nothing is uploaded. Would push to {args.repo_id}:")
    for target in report.targets:
        where = report.commits.get(target.revision, f"{args.repo_id}@{target.revision}")
        print(target.describe() if args.dry_run else f"{target.info.name} -> {target.revision}: {where}")
    if args.dry_run:
        print(f"Cards and plots as they would be uploaded, to read: {report.preview}/<revision>/README.md")
    for name, reason in report.skipped:
        print(f"sf-hf push: skipped {name}: {reason}", file=sys.stderr)
    return 1 if report.skipped else 0


register(
    Command(
        "evaluate",
        "validation loss/perplexity (and lm-eval tasks) of every checkpoint at x; summary, plots",
        _evaluate_arguments,
        _evaluate,
    )
)


def _card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the Trainer's output_dir; only read")
    parser.add_argument(
        "--repo-id", help=f"the repository the cards name, in their load snippets (default: {PLACEHOLDER_REPO_ID})"
    )
    parser.add_argument("--output-dir", help="where the cards go, one folder per revision (default: RUN_DIR/cards)")
    parser.add_argument("--base-model", help="for fine-tunes: the model the run started from")
    parser.add_argument("--license", help=LICENSE_HELP)


def _card(args: argparse.Namespace) -> int:
    output = args.output_dir or f"{args.run_dir.rstrip('/')}/cards"
    cards = write_cards(args.run_dir, output, args.repo_id, args.base_model, license=args.license)
    for revision, folder in cards.items():
        plots = ", ".join(sorted(p.name for p in folder.glob("*.png"))) or "no plot"
        print(f"{revision}: {folder / 'README.md'} (+ {plots})")
    return 0


register(
    Command(
        "card",
        "write the model card (and plots) push would upload for each checkpoint and the final model",
        _card_arguments,
        _card,
    )
)
register(Command("convert", "write a y checkpoint (plain Trainer) as a new folder at x", _convert_arguments, _convert))
register(
    Command(
        "push",
        "push checkpoints to step-N branches and the final model to main, with model cards",
        _push_arguments,
        _push,
    )
)


def _probe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint-N folder of a ScheduleFreeTrainer run; only read")
    parser.add_argument(
        "--decay-steps", type=int, help="K, the decay's length (default: 10%% of the checkpoint's steps)"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also run K steps at constant lr, to separate the decay's gain from progress (2x cost)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"a gain below this many nats counts as on the river (default: {DEFAULT_TOLERANCE})",
    )
    add_renamed_argument(
        parser,
        "--dataset-name",
        "--dataset",
        help="'embedded', a local file/folder or a Hub id (default: run_args.json)",
    )
    parser.add_argument("--dataset-config", help="dataset configuration (default: run_args.json)")
    parser.add_argument("--text-column", help="column with the text (default: run_args.json, else 'text')")
    parser.add_argument("--block-size", type=int, help="tokens per block (default: run_args.json)")
    parser.add_argument("--batch-size", type=int, help="sequences per step (default: the run's global batch)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="to fit the batch (default: 1)")
    parser.add_argument("--max-eval-blocks", type=int, help="evaluate on the first N validation blocks only")
    parser.add_argument("--max-grad-norm", type=float, help="clipping (default: none for SF, 1.0 for AdamW)")
    parser.add_argument("--seed", type=int, default=42, help="the run's seed: it sets the data order (default: 42)")
    add_renamed_argument(parser, "--output-file", "--output", help="also write the result as JSON to this file")


def _probe(args: argparse.Namespace) -> int:
    result = probe_checkpoint(
        args.checkpoint,
        decay_steps=args.decay_steps,
        control=args.control,
        dataset=args.dataset_name,
        dataset_config=args.dataset_config,
        text_column=args.text_column,
        block_size=args.block_size,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_eval_blocks=args.max_eval_blocks,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
    )
    print(result.describe(args.tolerance))
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0


register(
    Command(
        "probe",
        "branch a short linear lr decay from a checkpoint; a near-zero gain means the run is on the river",
        _probe_arguments,
        _probe,
    )
)


def _recipes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="print the file of this recipe or accelerate config (to copy)")


def _recipes(args: argparse.Namespace) -> int:
    if args.name:
        found = recipe_names().get(args.name) or accelerate_config_names().get(args.name)
        if found is None:
            raise UnknownNameError(
                f"{args.name!r} is neither a recipe nor an accelerate config of sf_hf; `sf-hf recipes` lists them."
            )
        print(found)
        return 0
    sections = (
        (f"Recipes in {RECIPES} (--config NAME, or the path of a copy to edit):", recipe_names()),
        (
            f"Accelerate configs in {ACCELERATE_CONFIGS} (--accelerate-config NAME; zeroN = deepspeed_zeroN):",
            accelerate_config_names(),
        ),
    )
    for title, names in sections:
        print(title)
        width = max(map(len, names))
        for name, path in names.items():
            print(f"  {name:<{width}}  {first_comment(path)}")
    return 0


register(
    Command(
        "recipes",
        "list the recipes and accelerate configs that sf_hf ships, by name; print one's file",
        _recipes_arguments,
        _recipes,
    )
)


def _launch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="a YAML recipe: a file or a bundled recipe's name (sf-hf recipes); default: the script's own"
    )
    parser.add_argument(
        "--accelerate-config",
        help="an accelerate config: a file or a bundled config's name (ddp, deepspeed_zero3 or zero3, ...: "
        "sf-hf recipes); default: accelerate's own default config",
    )
    parser.add_argument("--num-processes", type=int, help="processes to launch (default: the accelerate config's)")


def accelerate_launch_args(args: argparse.Namespace, module: str) -> list[str]:
    """The `accelerate launch` argument list that runs `module` with the recipe and the passed-through arguments."""
    launch = []
    if args.accelerate_config:
        launch += ["--config_file", str(resolve_accelerate_config(args.accelerate_config))]
    if args.num_processes is not None:
        launch += ["--num_processes", str(args.num_processes)]
    recipe = ["--config", str(resolve_recipe(args.config))] if args.config else []
    return [*launch, "-m", module, *recipe, *args.passed_through]


def pass_launch_defaults(launch: argparse.Namespace) -> argparse.Namespace:
    """Without an accelerate config (none named, no `accelerate config` default), passes the values accelerate
    would default to (one machine, no mixed precision, no dynamo, a process per GPU or one), which it otherwise
    warns were not passed on every launch. The recipe's `bf16`/`fp16` set the precision in the Trainer."""
    from accelerate.commands.config import default_config_file

    if launch.config_file is not None or os.path.isfile(default_config_file):
        return launch
    import torch

    gpus = torch.cuda.device_count()
    launch.num_processes = launch.num_processes or max(gpus, 1)
    launch.multi_gpu = launch.multi_gpu or (launch.num_processes > 1 and gpus > 1)
    launch.num_machines = launch.num_machines or 1
    launch.mixed_precision = launch.mixed_precision or "no"
    launch.dynamo_backend = launch.dynamo_backend or "no"
    return launch


def _launch(args: argparse.Namespace) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_args = accelerate_launch_args(args, SCRIPTS[args.command])
    if args.verbose:
        os.environ[DEBUG_ENV] = "1"  # the script keeps its tracebacks
    try:
        launch_command(pass_launch_defaults(launch_command_parser().parse_args(launch_args)))
    except subprocess.CalledProcessError as err:  # the script has printed its error; no launcher traceback
        return err.returncode
    return 0


for _name, _module in SCRIPTS.items():
    register(
        Command(
            _name,
            f"launch {_module} through accelerate (a recipe; other arguments go to the script)",
            _launch_arguments,
            _launch,
            passes_through=True,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    """The `sf-hf` parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="sf-hf",
        description="Schedule-Free training (pretrain, finetune) and checkpoints: evaluate, convert, push.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        subparser = subparsers.add_parser(
            command.name, help=command.help, description=command.help, allow_abbrev=not command.passes_through
        )
        # a training script's `--debug` is TrainingArguments.debug: there, only -v/--verbose
        spellings = ("-v", "--verbose") if command.passes_through else ("-v", "--verbose", "--debug")
        subparser.add_argument(
            *spellings,
            dest="verbose",
            action="store_true",
            help="full tracebacks of errors, third-party progress bars and logs (lm-eval's, the Hub client's)",
        )
        command.add_arguments(subparser)
    return parser


HTTP_LOGGERS = ("httpx", "httpx2", "huggingface_hub")
"""Third-party loggers the CLI keeps at WARNING unless `-v`: the Hub client logs every request at INFO."""


def main(argv: list[str] | None = None) -> int:
    """Runs `sf-hf` with `argv` (default: `sys.argv[1:]`) and returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if COMMANDS[args.command].passes_through:
        args.passed_through = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in HTTP_LOGGERS:  # one INFO line per HTTP request otherwise (96 for an 11-commit push)
        logging.getLogger(name).setLevel(logging.NOTSET if getattr(args, "verbose", False) else logging.WARNING)
    try:
        return COMMANDS[args.command].run(args)
    except (PipelineError, CheckpointError, UnknownNameError) as err:
        if args.verbose:
            raise
        print(f"sf-hf {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
