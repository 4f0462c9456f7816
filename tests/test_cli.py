"""`sf-hf`'s flags: one spelling per idea (`--output-dir` folders, `--output-file` files, `--dataset-name` as in the
recipes), the old spellings kept for one release with a warning."""

import pytest

from sf_hf.cli import build_parser


@pytest.mark.parametrize(
    "argv, dest, new",
    [
        (["convert", "ckpt", "--output", "X"], "output_dir", "--output-dir"),
        (["probe", "ckpt", "--output", "X"], "output_file", "--output-file"),
        (["probe", "ckpt", "--dataset", "X"], "dataset_name", "--dataset-name"),
        (["evaluate", "run", "--dataset", "X"], "dataset_name", "--dataset-name"),
    ],
)
def test_old_spellings_still_work_and_warn(argv, dest, new, capsys):
    parser = build_parser()
    old_args = parser.parse_args(argv)
    assert f"option '{argv[2]}' is deprecated" in capsys.readouterr().err
    new_args = parser.parse_args(argv[:2] + [new, "X"])
    assert capsys.readouterr().err == ""
    assert getattr(old_args, dest) == getattr(new_args, dest) == "X"
    assert vars(old_args) == vars(new_args)


@pytest.mark.parametrize(
    "command, dests",
    [
        ("evaluate", {"dataset_name": None, "output_dir": None}),
        ("convert", {"output_dir": None}),
        ("card", {"output_dir": None}),
        ("probe", {"dataset_name": None, "output_file": None}),
    ],
)
def test_defaults_and_help_show_only_the_new_spellings(command, dests, capsys):
    parser = build_parser()
    args = parser.parse_args([command, "path"] + (["--repo-id", "o/n"] if command == "push" else []))
    assert {k: getattr(args, k) for k in dests} == dests
    assert not {"output", "dataset"} & set(vars(args))
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert "--output " not in text and "--dataset " not in text and "--output-" in text


def test_every_command_takes_verbose_and_debug_except_where_debug_is_the_scripts():
    from sf_hf.cli import COMMANDS

    parser = build_parser()
    for name, command in COMMANDS.items():
        positional = [] if command.passes_through else ["path"] + (["--repo-id", "o/n"] if name == "push" else [])
        assert parser.parse_known_args([name, *positional, "-v"])[0].verbose
        args, unknown = parser.parse_known_args([name, *positional, "--debug", "underflow_overflow"])
        if command.passes_through:  # TrainingArguments.debug: passed through to the script
            assert not args.verbose and unknown == ["--debug", "underflow_overflow"]
        else:
            assert args.verbose
