"""``friendly``: the errors every command turns into one ``Error:`` line."""
import click
import pytest
from click.testing import CliRunner

from bench.cli._common import friendly


def command_raising(exc: Exception) -> click.Command:
    @click.command()
    @friendly
    def command():
        raise exc
    return command


@pytest.mark.parametrize("message", [
    "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 bytes",
    "DefaultCPUAllocator: not enough memory: you tried to allocate 4 bytes",  # posix_memalign returned NULL
    "CUDA out of memory. Tried to allocate 4.00 GiB",
])
def test_every_allocator_message_is_one_error_line(message):
    result = CliRunner().invoke(command_raising(RuntimeError(message)))
    assert result.exit_code == 1 and result.output.startswith("Error: out of memory;"), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_other_runtime_errors_stay_bugs():
    result = CliRunner().invoke(command_raising(RuntimeError("shape mismatch")))
    assert isinstance(result.exception, RuntimeError)
