"""What the speed benchmarks share: size, device, timing with peak memory, and the report.

Options (environment defaults in brackets):

- ``--bench-size small|full`` [``BENCH_SIZE``, default ``small``]: ``small`` runs every benchmark
  on tiny inputs in seconds (a smoke check, also under ``--benchmark-disable``); ``full`` gives the
  numbers of the README (``make benchmarks``; many minutes, several GB of memory).
- ``--bench-device cpu|cuda`` [``BENCH_DEVICE``, default ``cpu``]: where the torch benchmarks run
  (backbones, MuSc, ``bench run``); the metrics are NumPy and always run on the CPU.

Each benchmark adds rows to the session's ``Report`` and may declare ratios between timings
measured in the same session; the tables are printed at the end of the run. Nothing here asserts
a time.
"""
from __future__ import annotations

import ctypes
import gc
import os
import re
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from tabulate import tabulate

SIZES = ("small", "full")
_REPORT = pytest.StashKey["Report"]()
_STATUS = Path("/proc/self/status")
_MEMINFO = Path("/proc/meminfo")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "bench speed benchmarks")
    group.addoption("--bench-size", choices=SIZES, default=os.environ.get("BENCH_SIZE", "small"),
                    help="input sizes: small (seconds) or full (the README's numbers) [env BENCH_SIZE]")
    group.addoption("--bench-device", default=os.environ.get("BENCH_DEVICE", "cpu"),
                    help="torch device of the model benchmarks: cpu or cuda[:N] [env BENCH_DEVICE]")


def pytest_configure(config: pytest.Config) -> None:
    device = config.getoption("--bench-device")
    if not (device == "cpu" or device.startswith("cuda")):
        raise pytest.UsageError(f"--bench-device must be cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(f"--bench-device {device}: torch sees no CUDA device here")
    config.stash[_REPORT] = Report()


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    report = config.stash.get(_REPORT, None)
    if report is not None and report.rows:
        size, device = config.getoption("--bench-size"), config.getoption("--bench-device")
        disabled = ", --benchmark-disable: one cold call each, not a measurement" \
            if config.getoption("benchmark_disable", False) else ""
        terminalreporter.write_sep("=", f"bench report (size {size}, device {device}{disabled})")
        terminalreporter.write_line(report.render())


# ----------------------------------------------------------------------------- the report


@dataclass
class Ratio:
    label: str
    numerators: tuple[str, ...]  # row names whose seconds are summed
    denominator: str
    target: float | None = None  # the target, shown next to the value


@dataclass
class Report:
    """Rows per section (a row: name, seconds, free columns) and ratios of seconds within a section."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    ratios: dict[str, list[Ratio]] = field(default_factory=lambda: defaultdict(list))

    def add(self, section: str, name: str, seconds: float | None = None, **columns: Any) -> None:
        self.rows[section].append({"name": name, "seconds": seconds, **columns})

    def ratio(self, section: str, label: str, numerators: tuple[str, ...], denominator: str,
              target: float | None = None) -> None:
        """Declare ``sum(seconds of numerators) / seconds of denominator``, evaluated when printed."""
        self.ratios[section].append(Ratio(label, tuple(numerators), denominator, target))

    def _ratio_line(self, section: str, ratio: Ratio) -> str:
        seconds = {row["name"]: row["seconds"] for row in self.rows[section]}
        missing = [n for n in (*ratio.numerators, ratio.denominator) if seconds.get(n) is None]
        if missing:
            return f"{ratio.label}: n/a (not measured: {', '.join(missing)})"
        value = sum(seconds[n] for n in ratio.numerators) / seconds[ratio.denominator]
        target = f"  (target >= {ratio.target:g}x)" if ratio.target is not None else ""
        return f"{ratio.label}: {value:.1f}x{target}"

    def render(self) -> str:
        parts = []
        for section, rows in self.rows.items():
            columns = list(dict.fromkeys(k for row in rows for k in row))
            table = [[_cell(row.get(c)) for c in columns] for row in rows]
            parts.append(f"\n{section}\n" + tabulate(table, headers=columns, tablefmt="github"))
            parts += [self._ratio_line(section, r) for r in self.ratios.get(section, [])]
        return "\n".join(parts)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ----------------------------------------------------------------------------- measuring


def _kib(path: Path, key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", path.read_text(), re.M).group(1))


def _release_free_memory() -> None:
    """Give freed memory back to the OS, so that RSS counts live memory only (glibc; else no-op)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class PeakMemory:
    """Peak memory a call adds on top of what was live before it (host RSS; CUDA allocator).

    Host: the kernel's RSS high-water mark (``VmHWM``), reset by ``start`` (Linux ``clear_refs``);
    it sees NumPy and torch CPU allocations alike. CUDA: the caching allocator's peak of allocated
    bytes. ``None`` where the platform offers no such counter.
    """

    device: torch.device
    host_bytes: int | None = None
    cuda_bytes: int | None = None

    def start(self) -> None:
        _release_free_memory()
        self._host = None
        if _CLEAR_REFS.exists():
            try:
                _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
                self._host = _kib(_STATUS, "VmRSS")
            except OSError:
                pass
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda = torch.cuda.memory_allocated(self.device)

    def stop(self) -> None:
        if self._host is not None:
            self.host_bytes = max(0, _kib(_STATUS, "VmHWM") - self._host) * 1024
        if self.device.type == "cuda":
            self.cuda_bytes = torch.cuda.max_memory_allocated(self.device) - self._cuda


@contextmanager
def _memory_cap(margin: int = 2**30) -> Iterator[int | None]:
    """Let the process map at most the machine's available memory (less ``margin``) beyond what it
    maps now: a benchmark that needs more gets a MemoryError instead of waking the OOM killer.
    Yields the cap in bytes (None where /proc is missing). Host memory only: not for CUDA runs,
    whose driver reserves far more address space than it uses."""
    if not _MEMINFO.exists():
        yield None
        return
    extra = _kib(_MEMINFO, "MemAvailable") * 1024 - margin
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _kib(_STATUS, "VmSize") * 1024 + max(extra, 0)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield max(extra, 0)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def memory_cap() -> Callable[[], Any]:
    """``with memory_cap() as extra_bytes:`` see ``_memory_cap``."""
    return _memory_cap


@dataclass
class Measurement:
    result: Any
    seconds: float  # fastest round
    memory: PeakMemory  # of the first timed round

    def mib(self, which: str = "host") -> float | None:
        value = getattr(self.memory, f"{which}_bytes")
        return None if value is None else value / 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.fixture(scope="session")
def bench_size(pytestconfig: pytest.Config) -> str:
    return pytestconfig.getoption("--bench-size")


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    return torch.device(pytestconfig.getoption("--bench-device"))


@pytest.fixture(scope="session")
def report(pytestconfig: pytest.Config) -> Report:
    return pytestconfig.stash[_REPORT]


@pytest.fixture
def measure(benchmark, device: torch.device) -> Callable[..., Measurement]:
    """``measure(fn, *args, rounds=1, warmup=0)``: run ``fn`` through pytest-benchmark.

    Returns the result, the fastest round's seconds (device synchronised) and the peak extra
    memory of the first timed round (its set-up is untimed). The seconds are also taken here,
    around each call, so that ratios exist under ``--benchmark-disable`` (one call) too.
    """

    def run(fn: Callable[..., Any], *args: Any, rounds: int = 1, warmup: int = 0) -> Measurement:
        times: list[float] = []
        memory = PeakMemory(device)
        first = 0 if benchmark.disabled else warmup  # index of the call whose memory is measured

        def setup() -> None:
            if len(times) == first:
                memory.start()

        def call() -> Any:
            start = time.perf_counter()
            out = fn(*args)
            synchronize(device)
            times.append(time.perf_counter() - start)
            if len(times) == first + 1:
                memory.stop()
            return out

        result = benchmark.pedantic(call, setup=setup, rounds=rounds, warmup_rounds=warmup)
        return Measurement(result, min(times[first:]), memory)

    return run


@pytest.fixture(scope="session")
def one_category_tree(tmp_path_factory: pytest.TempPathFactory, bench_size: str) -> Path:
    """One category of the embedded synthetic dataset: the demo's (120 images, 256 px) at full size,
    12 images of 64 px in the small form."""
    from bench.datasets.synthetic import generate

    shape = {"full": dict(n_test=120, size=256), "small": dict(n_test=12, size=64)}[bench_size]
    root = tmp_path_factory.mktemp("data") / "synthetic"
    return generate(root, seed=0, categories=["fabric"], n_train=0, progress=False, **shape)


@pytest.fixture(scope="session")
def run_options(bench_size: str, device: torch.device) -> dict[str, Any]:
    """``RunConfig`` options of a real ``bench run`` on ``one_category_tree``: the demo's settings at
    full size; 2 groups, 4 synthetic images and 2 ARD steps in the small form."""
    from bench.config import PGTConfig

    options: dict[str, Any] = dict(device=str(device))
    if bench_size == "small":
        options.update(pgt=PGTConfig(n_groups=2, synth_per_group=4), refiner_options={"ard": {"steps": 2}})
    return options
