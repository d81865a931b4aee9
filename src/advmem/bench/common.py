"""Shared pieces of the benchmark harness: settings, side-by-side timing, machine facts, sections.

Timing discipline: every figure is a ratio of variants timed in the same process, interleaved
(A B C, then C B A, ...) after a warm-up, so slow drifts and other processes on a shared machine
hit every variant alike. Rounds come in pairs, one in forward and one in reverse order, and a
ratio is taken over the sum of each pair: a drift within a round (a CPU losing its boost clock
over a long round, say) then adds the same time to every variant, where a single forward round
would charge it to the variants that run last. The figure is the median over pairs, with the
range over pairs. On CUDA the device is synchronized before each clock read.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from advmem.engine.evaluate import EvalAttack, clean_per_sample, robust_per_sample, summarize
from advmem.engine.rundir import RunDir
from advmem.engine.trainer import Trainer
from advmem.recipe import recipe_from_dict

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass
class Settings:
    """What the harness runs; `quick` and `tiny` shrink sizes (tiny: for tests, figures meaningless)."""

    device: torch.device
    quick: bool = False
    tiny: bool = False
    repeats: int | None = None
    data_root: str | None = None
    peak_tflops: float | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="advmem-bench-")))

    def pick(self, default, quick, tiny):
        return tiny if self.tiny else quick if self.quick else default

    def rounds(self, default: int = 6, quick: int = 4) -> int:
        """Interleaved rounds, even (forward/reverse pairs) except for a single round."""
        n = self.repeats if self.repeats is not None else self.pick(default, quick, 1)
        return n + (n % 2) if n > 1 else n

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def fashion_mnist_available(self) -> bool:
        return (Path(FMNIST_DIR) / "train-images-idx3-ubyte.gz").is_file() or bool(self.data_root)


@dataclass
class Ratio:
    """Median over pairs of rounds of sum(A)/sum(B) (times `scale`), with the range over pairs."""

    median: float
    low: float
    high: float
    rounds: int

    def text(self, digits: int = 2) -> str:
        if self.rounds == 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}-{self.high:.{digits}f}]"


def ratio(a: list[float], b: list[float], scale: float = 1.0, group: int = 2) -> Ratio:
    """A/B per pair of consecutive rounds (a forward and a reverse one, see `interleaved`); an
    odd last round stands alone. `group=1` for rounds that are balanced on their own (see
    `on_off_steps`)."""
    pairs = [(sum(a[i:i + group]), sum(b[i:i + group])) for i in range(0, min(len(a), len(b)), group)]
    per_pair = [x / y * scale for x, y in pairs]
    return Ratio(statistics.median(per_pair), min(per_pair), max(per_pair), len(per_pair))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(variants: dict[str, Callable[[], Any]], *, rounds: int, warmup: int, device: torch.device,
                before: Callable[[str], None] | None = None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each variant, `rounds` interleaved rounds after `warmup` untimed rounds.

    `before(name)` runs untimed before each call (e.g. to reset the weights). `clock`:
    `time.process_time` for CPU time, which other processes on a shared machine do not inflate.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            if before:
                before(name)
            variants[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            if before:
                before(name)
            sync(device)
            t0 = clock()
            variants[name]()
            sync(device)
            times[name].append(clock() - t0)
    return times


def on_off_steps(step: Callable[[Any, bool], Any], batches: list, *, rounds: int,
                 device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds per round of `step(batch, on)` with a feature off and on, alternating at every batch.

    Each round visits every batch twice, off then on for even batches and on then off for odd
    ones (swapped in odd rounds), so a drift within a round and the position of a call hit
    both alike; each round is balanced on its own (take `ratio(..., group=1)`). One object runs
    both, so memory placement and caches are shared too: a second trainer instance, timed
    elsewhere in an epoch-level interleave, differed from the first by several percent.
    Returns (off, on): the per-round sums."""
    off: list[float] = []
    on: list[float] = []
    for r in range(rounds):
        sums = {False: 0.0, True: 0.0}
        for i, batch in enumerate(batches):
            first = (i + r) % 2 == 1
            for flag in (first, not first):
                sync(device)
                t0 = time.perf_counter()
                step(batch, flag)
                sync(device)
                sums[flag] += time.perf_counter() - t0
        off.append(sums[False])
        on.append(sums[True])
    return off, on


def median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class Goal:
    """One row of the summary table; `met` is None when the figure was not measured."""

    metric: str
    value: str
    goal: str
    met: bool | None

    def row(self) -> str:
        verdict = {True: "met", False: "not met", None: "-"}[self.met]
        return f"| {self.metric} | {self.value} | {self.goal} | {verdict} |"


@dataclass
class Section:
    """`summary`: lines shown at the top of the report's goal metrics (the peers table)."""

    title: str
    lines: list[str] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def markdown(self) -> str:
        return "\n".join([f"## {self.title}", ""] + self.lines + [""])


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


# ---------------------------------------------------------------------------------------------
# machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown (not a git checkout)"
    return head + (" (with uncommitted changes)" if dirty else "")


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_lines(settings: Settings, command: str, load_start, load_end, commit: str, started: float) -> list[str]:
    cores = os.cpu_count()
    lines = [
        f"- Command: `{command}`",
        f"- Date (UTC): {time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))} "
        f"(took {(time.time() - started) / 60:.1f} min)",
        f"- Git commit: {commit}",
        f"- CPU: {cpu_model()}, {cores} logical cores; torch {torch.__version__} using {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}",
        f"- Device benchmarked: {settings.device.type}"
        + (f" ({torch.cuda.get_device_name(settings.device)})" if settings.cuda else ""),
    ]
    if load_start is not None and load_end is not None:
        busy = max(load_start[0], load_end[0]) > 0.5 * (cores or 1)
        lines.append(
            f"- Load average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
            f"at end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f} on {cores} cores: "
            + ("**the machine was shared with other processes while this ran**; absolute times are noisy, "
               "the side-by-side ratios much less so." if busy else "the machine was mostly idle.")
        )
    mode = "tiny (harness check only; figures meaningless)" if settings.tiny else "quick" if settings.quick else "default"
    lines.append(f"- Settings: {mode}")
    return lines


def python_module_command(argv: list[str]) -> str:
    return " ".join([Path(sys.executable).name, "-m", "advmem.bench", *argv])


# ---------------------------------------------------------------------------------------------
# building toolkit pieces


def make_trainer(recipe: dict[str, Any], settings: Settings):
    """A set-up `Trainer` for `recipe` (a dict) on the benchmark device; nothing is written to disk."""
    body = {"device": settings.device.type, **recipe}
    r = recipe_from_dict(body, source="benchmark recipe")
    trainer = Trainer(r, RunDir(settings.workdir / "unused"), quiet=True, log=lambda msg: None)
    trainer.setup(resume=False)
    return trainer


def common_evaluator(model: torch.nn.Module, test, eps: float) -> dict[str, float]:
    """Natural and PGD-20 (step eps/4, uniform start, seeded) accuracy: the one evaluator of every row."""
    attack = EvalAttack(eps=eps, step_size=eps / 4, steps=20)
    nat = summarize(clean_per_sample(model, test, 256))["acc"]
    rob = summarize(robust_per_sample(model, test, attack, 256, generator=torch.Generator().manual_seed(0)))["acc"]
    return {"nat": nat, "pgd20": rob}


def fresh_sums(device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.zeros((), device=device) for k in ("loss", "acc", "grad_norm_sq")}


def data_section(settings: Settings, train_size: int, *, channels: int = 1, image_size: int = 28,
                 test_size: int = 256) -> dict[str, Any]:
    """Fashion-MNIST subset when on disk, else synthetic data of the same shape."""
    if channels == 1 and image_size == 28 and settings.fashion_mnist_available() and not settings.tiny:
        return {"dataset": "fashion-mnist", "data_root": settings.data_root, "train_size": train_size,
                "test_size": test_size, "augment": "none"}
    return {"dataset": "synthetic", "augment": "none",
            "synthetic": {"n_train": train_size, "n_test": test_size, "channels": channels,
                          "image_size": image_size}}
