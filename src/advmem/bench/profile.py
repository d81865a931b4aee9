"""Where an advmem epoch's CPU time goes, and what compile and threads do to it (issue 18, item 2).

Two parts, both on the peers' setting (small_cnn on Fashion-MNIST-shaped data, PGD-10 eps 0.1,
SGD 0.05; `peers._recipe`), for PGD-AT and TRADES:

- **profile**: a short epoch (`Trainer.train_epoch` itself, over a few batches) under
  torch.profiler at one torch thread. The method's attack, its training loss and the data
  iterator are wrapped in profiler labels (on this trainer instance only; the computation is
  untouched); each op's self CPU time goes to the phase of its innermost label, and to the
  backward side when an autograd engine call encloses it (the attack's input-gradient backward,
  the training backward). The labels' own self time is Python (and dispatch) outside ops. Shares
  are of the profiled epoch's CPU time, so they sum to 100%. The profiler adds its own cost per
  op, so shares of small ops read high; decide on timings, not on profiles (docs/speed.md).
- **kernel options**: eager at the toolkit defaults, `perf.compile: true` (inductor; fold_bn
  and fast_pool then resolve off) and eager at 2 threads, interleaved in forward/reverse pairs of
  rounds of the same steps from the same weights; process CPU time and wall per round, ratio to
  eager (1 thread) as median [range]. Then every variant trains the same steps from the same
  weights and seed: the max abs difference of its final weights to eager's and natural/PGD-20
  accuracy by `common_evaluator`. Compile is left out with `--tiny` (a cold inductor build
  takes minutes on 2 cores) and whenever torch.compile cannot run here.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

from advmem.bench.common import Section, Settings, common_evaluator, fresh_sums, interleaved, make_trainer
from advmem.bench.common import median, ratio, table
from advmem.bench.peers import EPS, METHODS, _recipe

LABEL = "advmem::"
PHASES = {  # label -> row of the table
    "epoch": "epoch bookkeeping outside the steps (lr, metric read at the end)",
    "data": "data order and batching (shuffle, augmentation, gather)",
    "attack": "attack",
    "step": "step bookkeeping (grad norm, metric sums, non-finite check, zero_grad)",
    "loss": "training forward (loss)",
}
OPTIMIZER = "optimizer step"
EAGER, COMPILE = "eager (defaults), 1 thread", "perf.compile: true, 1 thread"
MATCHED = "eager, fold_bn and fast_pool off (what compile resolves to), 1 thread"
# the variant each one is checked against besides eager: compile turns fold_bn and fast_pool
# off, so its own kernels are judged against eager with those off
SAME_ARITHMETIC = {COMPILE: MATCHED}
PYTHON = "Python and dispatch outside ops (all phases)"


def _label(name: str, fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        with record_function(LABEL + name):
            return fn(*args, **kwargs)
    return wrapped


def _labelled_iter(name: str, make: Callable) -> Callable:
    def batches(*args, **kwargs):
        it = iter(make(*args, **kwargs))
        while True:
            with record_function(LABEL + name):
                try:
                    batch = next(it)
                except StopIteration:
                    return
            yield batch
    return batches


def instrument(trainer) -> None:
    """Profiler labels around the phases of this trainer's step (instance attributes only)."""
    m = trainer.method
    m.attack = _label("attack", m.attack)
    m.outer_loss = _label("loss", m.outer_loss)
    trainer.train_step = _label("step", trainer.train_step)
    train = trainer.bundle.train
    train.batches = _labelled_iter("data", train.batches)


def phase_of(event) -> tuple[str, bool, bool]:
    """(phase label, under an autograd engine call, under the optimizer step) of a profiler event."""
    phase, backward, optim = "epoch", False, False
    e = event
    while e is not None:
        name = e.name
        if name.startswith("autograd::engine::evaluate_function"):
            backward = True
        elif name.startswith("Optimizer.step"):
            optim = True
        elif name.startswith(LABEL) and phase == "epoch":
            phase = name[len(LABEL):]
        e = e.cpu_parent
    return phase, backward, optim


def row_of(event) -> str:
    phase, backward, optim = phase_of(event)
    if event.name.startswith(LABEL):
        return PYTHON
    if optim:
        return OPTIMIZER
    if phase == "attack":
        return "attack input-gradient backward" if backward else "attack forward (incl. clean logits)"
    if backward:  # the training loss's backward runs in the step, outside the loss label
        return "training backward"
    return PHASES[phase]


def profile_epoch(trainer) -> tuple[dict[str, float], list[tuple[str, float, dict[str, float]]], float]:
    """Profile one `train_epoch`: (share per row, top ops (name, share, share per row), total ms)."""
    instrument(trainer)
    trainer.train_epoch(1)  # warm-up (attack-view tracing, allocator)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof, record_function(LABEL + "epoch"):
        trainer.train_epoch(1)
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    root = next(e for e in events if e.name == LABEL + "epoch")
    total = root.cpu_time_total
    rows: dict[str, float] = defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        r = row_of(e)
        rows[r] += e.self_cpu_time_total
        if not e.name.startswith(LABEL) and not e.name.startswith(("autograd::", "Optimizer.")):
            ops[e.name][r] += e.self_cpu_time_total
    counted = sum(rows.values())
    shares = {k: 100 * v / counted for k, v in rows.items()}
    top = sorted(((name, 100 * sum(by.values()) / counted, {k: 100 * v / counted for k, v in by.items()})
                  for name, by in ops.items()), key=lambda t: -t[1])
    return shares, top, total / 1000


# ---------------------------------------------------------------------------------------------
# kernel options side by side


def _compile_works() -> str | None:
    """None if inductor can build a graph here, else why not."""
    try:
        f = torch.compile(lambda x: x * 2 + 1, dynamic=False)
        f(torch.ones(3))
        return None
    except Exception as err:  # no compiler, unsupported platform
        return f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"


def _variants(settings: Settings, method: str, compile_ok: bool) -> dict[str, tuple[object, int]]:
    """name -> (trainer, torch threads) for one method."""
    base = _recipe(settings, method, epochs=1)
    out = {EAGER: (make_trainer(base, settings), 1)}
    if compile_ok:
        out[COMPILE] = (make_trainer({**base, "perf": {"compile": True}}, settings), 1)
        out[MATCHED] = (make_trainer({**base, "perf": {"fold_bn": False, "fast_pool": False}}, settings), 1)
    out["eager (defaults), 2 threads"] = (make_trainer(base, settings), 2)
    return out


def compare(settings: Settings, method: str, steps: int, rounds: int, compile_ok: bool):
    """Interleaved CPU/wall times and result checks of the kernel options for one method."""
    variants = _variants(settings, method, compile_ok)
    first = next(iter(variants.values()))[0]
    init = {k: v.detach().clone() for k, v in first.model.state_dict().items()}
    batches = list(first.bundle.train.batches(first.recipe.optim.batch_size, shuffle=False))[:steps]
    wall: dict[str, list[float]] = defaultdict(list)

    def reset(name: str) -> None:
        t, _ = variants[name]
        t.model.load_state_dict(init)
        t.optimizer.state.clear()
        torch.manual_seed(0)

    def run_steps(name: str, timed: bool = True) -> None:
        t, threads = variants[name]
        torch.set_num_threads(threads)
        try:
            t0 = time.perf_counter()
            sums = fresh_sums(settings.device)
            for i, b in enumerate(batches, start=1):
                t.train_step(b, 1, i, sums)
            if timed:
                wall[name].append(time.perf_counter() - t0)
        finally:
            torch.set_num_threads(1)

    names = list(variants)
    for name in names:  # warm-up untimed: compile builds its graphs here
        reset(name)
        run_steps(name, timed=False)
    cpu = interleaved({name: (lambda name=name: run_steps(name)) for name in names}, rounds=rounds, warmup=0,
                      device=settings.device, before=reset, clock=time.process_time)
    results = {}
    for name in names:  # the same steps from the same weights and seed, then one evaluator
        reset(name)
        run_steps(name, timed=False)
        t = variants[name][0]
        results[name] = ({k: v.detach().clone() for k, v in t.model.state_dict().items()},
                         common_evaluator(t.model, t.bundle.test, EPS))
    def max_diff(a: str, b: str) -> float:
        wa, wb = results[a][0], results[b][0]
        return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)

    checks = {name: (max_diff(name, EAGER),
                     max_diff(name, SAME_ARITHMETIC[name]) if name in SAME_ARITHMETIC else None, acc)
              for name, (_, acc) in results.items()}
    return names, cpu, dict(wall), checks


def _short_epoch(settings: Settings, method: str, steps: int) -> dict:
    """The peers' recipe with a training set of `steps` batches, so one epoch is `steps` steps."""
    recipe = _recipe(settings, method, epochs=1)
    n, data = steps * recipe["optim"]["batch_size"], recipe["data"]
    if "synthetic" in data:
        data["synthetic"] = {**data["synthetic"], "n_train": n}
    else:
        data["train_size"] = n
    return recipe


def run(settings: Settings) -> Section:
    section = Section("Profile: where an epoch's CPU time goes, and kernel options (compile, threads)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    steps = settings.pick(8, 4, 2)
    try:
        section.add(f"Peers' setting: small_cnn, {'synthetic' if settings.tiny else 'Fashion-MNIST-shaped'} data, "
                    f"Linf PGD-10 eps {EPS:g}, SGD; one `Trainer.train_epoch` of {steps} batches under "
                    "torch.profiler, 1 torch thread, after one untimed epoch. Share = self CPU time of the ops "
                    "in each phase / all self CPU time in the epoch (sums to 100%). The profiler adds a cost "
                    "per op, so small ops and Python read high; the side-by-side timings below decide.", "")
        for method, title in METHODS.items():
            shares, top, total_ms = profile_epoch(make_trainer(_short_epoch(settings, method, steps), settings))
            section.add(f"**{title}** ({total_ms:.0f} ms profiled):", "",
                        *table(["phase", "share of CPU time %"],
                               [[k, f"{v:.1f}"] for k, v in sorted(shares.items(), key=lambda kv: -kv[1])]
                               + [["total", f"{sum(shares.values()):.1f}"]]), "",
                        *table(["op (self CPU time)", "share %", "where (phase: share %)"],
                               [[name, f"{s:.1f}", "; ".join(f"{k}: {v:.1f}" for k, v in
                                                             sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.05)]
                                for name, s, by in top[:12]]), "")
        why_not = "not run with --tiny (a cold inductor build takes minutes)" if settings.tiny else _compile_works()
        rounds = settings.rounds(default=4, quick=2)
        section.add(f"Kernel options side by side: {steps} training steps per round from the same weights, "
                    f"{rounds} interleaved round(s) (forward/reverse pairs), process CPU time and wall; ratio = "
                    "variant / eager at 1 thread, median [range] over pairs. Results: the same steps from the "
                    "same weights and seed, max |w - w_eager| over all weights (sign steps turn a rounding difference "
                    "in an attack gradient into a whole step for that pixel, so this grows with the steps), "
                    "accuracy by `common_evaluator`."
                    + (f" perf.compile: {why_not}." if why_not else ""), "")
        rows = []
        for method, title in METHODS.items():
            names, cpu, wall, checks = compare(settings, method, steps, rounds, compile_ok=why_not is None)
            ref = names[0]
            for name in names:
                diff, same, acc = checks[name]
                rows.append([title, name, f"{1000 * median(cpu[name]) / steps:.1f}",
                             ratio(cpu[name], cpu[ref]).text(), f"{1000 * median(wall[name]) / steps:.1f}",
                             ratio(wall[name], wall[ref]).text(),
                             f"{diff:.2e}" + (f" ({same:.2e} to the fold_bn/fast_pool-off row)" if same is not None
                                              else ""),
                             f"{100 * acc['nat']:.1f} / {100 * acc['pgd20']:.1f}"])
        section.add(*table(["method", "variant", "CPU ms/step", "CPU / eager", "wall ms/step", "wall / eager",
                            "max abs weight diff to eager", "natural / PGD-20 %"], rows), "")
    finally:
        torch.set_num_threads(threads)
    return section
