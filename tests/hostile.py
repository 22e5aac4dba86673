"""Shared by the bad-input tests (``tests/test_bad_*.py``, fixtures ``base``, ``out``, ``tree`` and
``maps`` in conftest.py): ``fails``, the command answers with ONE ``Error:`` line holding the given
words, and the argument lists of the commands."""
from click.testing import CliRunner

from bench.cli import main

FAST = ["--refiners", "none", "--quiet", "--n-groups", "2", "--no-cache"]


def invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fails(args, *needles):
    """The command fails with one ``Error:`` line holding every needle; returns that line."""
    result = invoke(args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    shown = result.output or repr(result.exception)  # an uncaught exception leaves no output
    assert result.exit_code != 0, shown
    assert "Traceback" not in result.output, shown
    assert len(lines) == 1 and lines[0].startswith("Error: "), shown
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    print(lines[0])  # shown with -s: the message each bad input gets
    return lines[0]


def succeeds(args):
    """The command exits 0 without a traceback; returns its result."""
    result = invoke(args)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    return result


def run_id(result) -> str:
    return result.output.split("MLflow run ", 1)[1].split()[0]


def run_args(root, out, *extra):
    return ["run", "--data-root", root, "--out", out, *FAST, *extra]


def eval_args(maps, base, *extra):
    return ["eval", "--maps", maps, "--data-root", base, "--json", *extra]
