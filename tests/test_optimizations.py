"""Each speed optimization leaves results unchanged beyond floating-point rounding.

fp32 paths must be equal (bit for bit where the same kernels run, else to 1e-5); bf16 and fp16
paths within the tolerances stated in each test. Speed itself is measured by
`python -m advmem.bench`, never asserted here.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advmem.attacks import cross_entropy, kl_to_clean, pgd
from advmem.attacks.pgd import attack_grad_scale
from advmem.bench.reference_loop import attack_pgd_reference, loader_from_device_dataset, pil_crop, to_tensor
from advmem.data.dataset import random_crop
from advmem.engine.evaluate import EvalAttack, clean_per_sample, robust_per_sample
from advmem.engine.rundir import RunDir
from advmem.engine.trainer import Trainer
from advmem.errors import UserError
from advmem.methods import build_method
from advmem.models import build_model
from advmem.recipe import AttackConfig, recipe_from_dict

EPS, ALPHA = 8 / 255, 2 / 255


def tiny_model(channels=1, size=8, seed=0):
    torch.manual_seed(seed)
    return build_model("small_cnn", in_channels=channels, num_classes=10, image_size=(size, size),
                       mean=[0.5] * channels, std=[0.25] * channels, width=4, hidden=16)


def perf_recipe(**sections):
    body = {
        "device": "cpu",
        "data": {"dataset": "synthetic", "synthetic": {"n_train": 96, "n_test": 64}},
        "model": {"name": "small_cnn", "kwargs": {"width": 4, "hidden": 16}},
        "attack": {"steps": 3},
        "optim": {"epochs": 1, "batch_size": 32},
        "eval": {"train_subset": 32, "attack": {"steps": 2}},
    }
    for key, value in sections.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe_from_dict(body)


def make_trainer(tmp_path, **sections):
    trainer = Trainer(perf_recipe(**sections), RunDir(tmp_path / "run"), quiet=True, log=lambda m: None)
    trainer.setup(resume=False)
    return trainer


def one_epoch(tmp_path, **sections):
    """(train_epoch row, flattened final weights) after one epoch from the seed-0 init."""
    trainer = make_trainer(tmp_path, **sections)
    torch.manual_seed(123)  # attack random starts draw from the global RNG
    row = trainer.train_epoch(1)
    weights = torch.cat([p.detach().float().flatten() for p in trainer.model.parameters()])
    return row, weights


def batch(n=16, channels=1, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


# -- attack computes input gradients only --------------------------------------------------------


def test_input_grad_only_attack_equals_full_backward_reference():
    model = tiny_model()
    x, y = batch()
    delta0 = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) - 1) * EPS
    ref = attack_pgd_reference(model, x, y, eps=EPS, alpha=ALPHA, steps=5, delta0=delta0)
    weight_grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in weight_grads), "the reference computes weight gradients"
    for p in model.parameters():
        p.grad = None

    # Same start: pgd draws u from the generator and starts at (2u-1)*eps, as delta0 above.
    ours = pgd(model, x, cross_entropy(y), eps=EPS, step_size=ALPHA, steps=5,
               generator=torch.Generator().manual_seed(5))
    assert torch.equal(ours, ref)
    assert all(p.grad is None for p in model.parameters()), "the lean attack must not touch weight gradients"
    assert all(p.requires_grad for p in model.parameters()), "requires_grad restored after the attack"
    assert not (ours == x).all()


# -- TRADES: clean logits once per batch ------------------------------------------------------------


def test_trades_clean_logits_once_equals_per_step_recomputation():
    model = tiny_model()
    x, y = batch(seed=1)
    attack = AttackConfig(steps=4)
    method = build_method(recipe_from_dict({"method": {"name": "trades"}}).method, attack, num_train=16,
                          num_classes=10, device="cpu")
    from advmem.data.dataset import Batch

    torch.manual_seed(7)
    ctx = method.attack(model, Batch(x, y, torch.arange(16)), epoch=1)

    def recomputing_objective(logits):  # what the reference code does: model(x_natural) at every step
        with torch.no_grad():
            clean = model(x)
        return kl_to_clean(clean)(logits)

    torch.manual_seed(7)
    ref = pgd(model, x, recomputing_objective, eps=attack.eps_value, step_size=attack.step_value, steps=4,
              start="gaussian", clamp_start=False)  # TRADES' unclamped start (attack.start_clamp: auto)
    assert torch.equal(ctx.x_adv, ref)
    model.eval()
    with torch.no_grad():
        assert torch.equal(ctx.clean_logits, model(x))


# -- no host synchronization inside the step -------------------------------------------------------


def test_train_epoch_reads_the_device_once_per_epoch(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, data={"synthetic": {"n_train": 128, "n_test": 32}})
    calls = {"item": 0, "tolist": 0, "bool": 0, "float": 0, "int": 0, "cpu": 0, "numpy": 0}
    names = {"item": "item", "tolist": "tolist", "bool": "__bool__", "float": "__float__", "int": "__int__",
             "cpu": "cpu", "numpy": "numpy"}
    for key, attr in names.items():
        original = getattr(torch.Tensor, attr)

        def counted(self, *a, _orig=original, _key=key, **k):
            calls[_key] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, counted)
    row = trainer.train_epoch(1)
    monkeypatch.undo()
    assert row["train_loss"] > 0
    # 4 steps, one read at the end of the epoch (the .tolist() of the stacked sums), nothing per step
    assert calls == {"item": 0, "tolist": 1, "bool": 0, "float": 0, "int": 0, "cpu": 0, "numpy": 0}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.set_sync_debug_mode needs a GPU")
def test_train_step_has_no_cuda_sync(tmp_path):
    trainer = make_trainer(tmp_path, device="cuda")
    data = next(trainer.bundle.train.batches(32, shuffle=True, generator=torch.Generator().manual_seed(0)))
    sums = {k: torch.zeros((), device="cuda") for k in ("loss", "acc", "grad_norm_sq")}
    trainer.train_step(data, 1, 1, sums)  # warm-up (lazy init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step(data, 1, 2, sums)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# -- evaluation under inference_mode ---------------------------------------------------------------


def test_evaluation_passes_run_in_inference_mode_with_unchanged_results(tmp_path):
    trainer = make_trainer(tmp_path)
    model, test = trainer.model, trainer.bundle.test
    modes: list[tuple[bool, bool]] = []  # (inference_mode, grad_enabled) at each forward
    hook = model.register_forward_pre_hook(
        lambda m, a: modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled())))
    out = clean_per_sample(model, test, 16)
    assert len(modes) == 4 and all(inf for inf, _ in modes)
    modes.clear()
    rob = robust_per_sample(model, test, EvalAttack(eps=EPS, step_size=ALPHA, steps=2), 16,
                            generator=torch.Generator().manual_seed(0))
    hook.remove()
    # per batch: 2 attack forwards (need autograd for the input gradient), then 1 inference-mode pass
    assert modes == [(False, True), (False, True), (True, False)] * 4
    model.eval()
    with torch.no_grad():
        logits = model(test.all_float())
    assert torch.equal(out["correct"], logits.argmax(1) == test.y)
    assert torch.allclose(out["loss"], F.cross_entropy(logits, test.y, reduction="none"), atol=1e-6)
    assert (rob["correct"] <= out["correct"]).all()


# -- device-resident data with batched augmentation equals the per-sample PIL pipeline ------------


def test_device_batches_equal_the_per_sample_pil_pipeline(tmp_path):
    trainer = make_trainer(tmp_path)
    train = trainer.bundle.train
    loader = loader_from_device_dataset(train, 32, seed=0)
    xs, ys = zip(*[loader.dataset[i] for i in range(len(train))])
    assert torch.equal(torch.stack(xs), train.all_float())
    assert torch.equal(torch.tensor(ys), train.y)
    # batched crop at fixed offsets == PIL pad-and-crop per sample
    imgs = (torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    oy, ox = torch.tensor([0, 1, 2, 3, 4, 8]), torch.tensor([8, 0, 4, 3, 2, 1])
    ours = random_crop(imgs.float() / 255, oy, ox, 4)
    from PIL import Image

    ref = torch.stack([to_tensor(pil_crop(Image.fromarray(im.permute(1, 2, 0).numpy()), int(a), int(b), 4))
                       for im, a, b in zip(imgs, oy, ox)])
    assert torch.equal(ours, ref)


# -- perf section: channels_last, precision, compile -----------------------------------------------


def test_perf_defaults_resolve_to_plain_fp32_on_cpu(tmp_path):
    trainer = make_trainer(tmp_path)
    assert trainer.perf.as_dict() == {"channels_last": True, "precision": "fp32", "compile": False,
                                      "cuda_graphs": False, "fold_bn": True, "fast_pool": True}
    assert trainer.step_model is trainer.model and not trainer.scaler.is_enabled()


def test_channels_last_fp32_matches_contiguous(tmp_path):
    row_a, w_a = one_epoch(tmp_path / "a", perf={"channels_last": False})
    row_b, w_b = one_epoch(tmp_path / "b", perf={"channels_last": True})
    assert abs(row_a["train_loss"] - row_b["train_loss"]) < 1e-5
    assert torch.allclose(w_a, w_b, rtol=1e-4, atol=1e-5)


# -- BatchNorm folded into the convolution for eval-mode attacks -------------------------------------


def _trained_bn(model, shape=(3, 16, 16)):
    """Give BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, *shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


@pytest.mark.parametrize("name,kwargs,folds", [("small_cnn", {"width": 4, "hidden": 16}, 3),
                                               ("resnet18", {"width": 4}, 20), ("vgg16", {}, 13),
                                               ("preact_resnet18", {"width": 4}, 8), ("mlp", {}, 0)])
def test_folded_view_equals_the_model_in_eval_mode(name, kwargs, folds):
    from advmem.attacks.attack_view import folded_view

    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10, image_size=(16, 16), mean=[0.5] * 3, std=[0.25] * 3,
                        **kwargs)
    _trained_bn(model)
    view = folded_view(model)
    if folds == 0:  # no BatchNorm: nothing to fold (pre-activation blocks fold their inner conv1 -> bn2)
        assert view is None
        return
    assert len(view.folded) == folds
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(view(x), model(x), rtol=1e-5, atol=1e-5)
    # the view follows weight updates (refreshed on each call)
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)).running_var.mul_(2.0)
        assert torch.allclose(folded_view(model)(x), model(x), rtol=1e-5, atol=1e-5)


def test_folded_view_is_rebuilt_when_tensors_or_modules_are_replaced():
    from advmem.attacks.attack_view import folded_view

    model = _trained_bn(tiny_model(channels=3, size=16))
    x = torch.rand(4, 3, 16, 16)
    first = folded_view(model)
    assert folded_view(model) is first  # cached while nothing is replaced
    state = {k: (v + 0.3 if k.endswith("mean") else v.clone()) for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)  # new tensor objects, normalization mean included
    view = folded_view(model)
    assert view is not first
    with torch.no_grad():
        assert torch.allclose(view(x), model(x), rtol=1e-5, atol=1e-5)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_pre_hook(lambda module, inputs: None)  # hooks would not run inside a folded unit
    assert len(folded_view(model).folded) == 2


def test_folded_attack_equals_the_plain_attack_and_leaves_the_model_alone():
    from advmem.attacks.attack_view import use_attack_view

    model = _trained_bn(tiny_model(channels=3, size=16)).train()
    x, y = batch(32, channels=3, size=16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = []
    for fold in (False, True):
        g = torch.Generator().manual_seed(5)
        with use_attack_view(fold_bn=fold):
            runs.append(pgd(model, x, cross_entropy(y), eps=EPS, step_size=ALPHA, steps=10, generator=g))
    assert (runs[0] - runs[1]).abs().max() < 1e-6
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_fold_bn_training_matches_unfolded(tmp_path, monkeypatch):
    from advmem.attacks import attack_view

    built = []
    real_build = attack_view._build
    monkeypatch.setattr(attack_view, "_build", lambda model, options: built.append(real_build(model, options)) or built[-1])
    off = {"fold_bn": False, "fast_pool": False, "channels_last": False}
    row_a, w_a = one_epoch(tmp_path / "a", perf=off)
    assert built == []
    row_b, w_b = one_epoch(tmp_path / "b", perf={**off, "fold_bn": True})
    assert len(built) == 1 and len(built[0].folded) == 3  # traced once, all three conv -> BN pairs folded
    assert built[0].pools == 0
    assert abs(row_a["train_loss"] - row_b["train_loss"]) < 1e-5
    assert torch.allclose(w_a, w_b, rtol=1e-4, atol=1e-6)


# -- max-pool through the NHWC kernel in the attack view ---------------------------------------------


@pytest.mark.parametrize("kwargs,size", [({"kernel_size": 2}, 8), ({"kernel_size": 2}, 7),
                                         ({"kernel_size": 3, "stride": 2, "padding": 1}, 9),
                                         ({"kernel_size": 2, "ceil_mode": True}, 7)])
def test_nhwc_max_pool_is_bit_for_bit_the_nchw_pool(kwargs, size):
    from advmem.attacks.attack_view import NHWCMaxPool

    pool = nn.MaxPool2d(**kwargs)
    x = torch.relu(torch.randn(4, 6, size, size, generator=torch.Generator().manual_seed(0)))
    x[:, :, :4, :4] = 0.5  # positive ties: the first maximum in each window must win, as in NCHW
    grad_out = None
    results = []
    for module in (pool, NHWCMaxPool(pool)):
        xr = x.clone().requires_grad_(True)
        out = module(xr)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        out.backward(grad_out)
        assert out.is_contiguous()
        results.append((out.detach(), xr.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    cl = x.contiguous(memory_format=torch.channels_last)  # already NHWC: the plain pool, layout kept
    assert NHWCMaxPool(pool)(cl).is_contiguous(memory_format=torch.channels_last)


class _FunctionalReluNet(nn.Module):
    """conv -> F.relu -> MaxPool2d -> conv -> torch.relu (no pool) -> head: one pair to swap."""

    def __init__(self):
        super().__init__()
        self.conv1, self.pool, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x), inplace=True))
        return self.head(torch.relu(self.conv2(x)).flatten(1))


@pytest.mark.parametrize("name", ["vgg16", "small_cnn", "functional"])
def test_fast_pool_view_equals_the_model_with_its_gradient(name):
    from advmem.attacks.attack_view import ViewOptions, folded_view

    torch.manual_seed(0)
    if name == "functional":
        model, swaps = _FunctionalReluNet().eval(), 1
    else:
        model = build_model(name, in_channels=3, num_classes=10, image_size=(16, 16), mean=[0.5] * 3,
                            std=[0.25] * 3, **({"width": 4, "hidden": 16} if name == "small_cnn" else {}))
        model, swaps = _trained_bn(model), {"vgg16": 4, "small_cnn": 3}[name]
    view = folded_view(model, ViewOptions(fold_bn=False, fast_pool=True))
    assert view.swapped == swaps
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    grads = []
    for module in (model, view):
        xr = x.clone().requires_grad_(True)
        out = module(xr)
        out.square().sum().backward()
        grads.append((out.detach(), xr.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_fast_pool_attack_and_training_are_bit_for_bit_unchanged(tmp_path):
    from advmem.attacks import attack_view

    model = _trained_bn(tiny_model(channels=3, size=16)).train()
    x, y = batch(32, channels=3, size=16)
    runs = []
    for fast_pool in (False, True):
        with attack_view.use_attack_view(fold_bn=False, fast_pool=fast_pool):
            runs.append(pgd(model, x, cross_entropy(y), eps=EPS, step_size=ALPHA, steps=10,
                            generator=torch.Generator().manual_seed(5)))
    view = attack_view.folded_view(model, attack_view.ViewOptions(False, True))
    assert view.pools == 3 and view.swapped == 3
    model.eval()
    with torch.no_grad():
        assert torch.equal(view(x), model(x))
    assert torch.equal(runs[0], runs[1])
    off = {"fold_bn": False, "channels_last": False}
    row_a, w_a = one_epoch(tmp_path / "a", perf={**off, "fast_pool": False})
    row_b, w_b = one_epoch(tmp_path / "b", perf={**off, "fast_pool": True})
    assert row_a["train_loss"] == row_b["train_loss"] and torch.equal(w_a, w_b)


@pytest.mark.parametrize("precision,tol", [("bf16", 0.05), ("fp16", 0.02)])
def test_reduced_precision_training_within_tolerance(tmp_path, precision, tol):
    """Stated tolerance: after one epoch (3 steps), the mean training loss within `tol` of fp32's
    and the weights within 2% relative (L2) of fp32's."""
    row_a, w_a = one_epoch(tmp_path / "a")
    row_b, w_b = one_epoch(tmp_path / "b", perf={"precision": precision})
    assert abs(row_a["train_loss"] - row_b["train_loss"]) < tol
    assert ((w_a - w_b).norm() / w_a.norm()) < 0.02
    assert row_b["grad_norm_sq"] > 0


class _TinyScale(nn.Module):
    def forward(self, x):
        return x * 1e-7


def test_fp16_attack_gradient_scaling_keeps_sign_steps_alive():
    """The backward of x * 1e-7 sends gradients of ~1e-8 through the fp16 part of the graph: they
    round to zero (sign step lost); scaling the attack loss by 2^10 keeps them, and gives fp32's
    steps for nearly every pixel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), _TinyScale(), nn.Linear(32, 10))
    x, y = batch(n=8)
    kwargs = dict(eps=EPS, step_size=EPS, steps=1, start="none")
    reference = pgd(model, x, cross_entropy(y), **kwargs)
    with torch.autocast("cpu", dtype=torch.float16):
        unscaled = pgd(model, x, cross_entropy(y), **kwargs)
        with attack_grad_scale(1024.0):
            scaled = pgd(model, x, cross_entropy(y), **kwargs)
    assert (unscaled == x).float().mean() > 0.9, "without scaling most sign steps vanish"
    agree = ((scaled - x).sign() == (reference - x).sign()).float().mean()
    assert agree > 0.95
    # the scale itself changes nothing in fp32 (power of two, sign step)
    with attack_grad_scale(1024.0):
        assert torch.equal(pgd(model, x, cross_entropy(y), **kwargs), reference)


class _OverflowingGrad(torch.autograd.Function):
    """Identity whose backward overflows as fp16 would: inf, -inf and NaN in three pixels."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        g.view(g.shape[0], -1)[:, 0] = float("inf")
        g.view(g.shape[0], -1)[:, 1] = float("-inf")
        g.view(g.shape[0], -1)[:, 2] = float("nan")
        return g


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_scaled_attack_gradient_overflow_leaves_the_iterate_finite(norm):
    """fp16 loss scaling can overflow the backward; the iterate must stay finite and in the ball
    (Linf: an infinite entry still steps by its sign), and the other pixels step as without it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    class Overflowing(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(_OverflowingGrad.apply(x))

    model = Overflowing()
    x, y = batch(n=4)
    kwargs = dict(eps=EPS, step_size=EPS / 2, steps=3, start="none", norm=norm)
    x_adv = pgd(model, x, cross_entropy(y), grad_scale=1024.0, **kwargs)
    assert torch.isfinite(x_adv).all()
    if norm == "Linf":
        assert (x_adv - x).abs().max() <= EPS + 1e-6
        flat = (x_adv - x).view(4, -1)
        assert (flat[:, 0] >= 0).all() and (flat[:, 1] <= 0).all() and (flat[:, 0] > 0).any()
        plain = pgd(net, x, cross_entropy(y), **kwargs)  # the healthy pixels are unaffected
        assert torch.equal((x_adv - x).view(4, -1)[:, 3:], (plain - x).view(4, -1)[:, 3:])


def test_evaluation_turns_tf32_off_and_restores_it():
    """"Evaluation always runs in fp32": on CUDA, cuDNN would otherwise run fp32 convolutions in
    TF32. Clean and robust passes see TF32 off; the flags are restored afterwards."""
    from advmem.data.dataset import DeviceDataset

    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return x.flatten(1)[:, :10] * 1.0

    data = DeviceDataset(torch.randint(0, 255, (4, 1, 4, 4), dtype=torch.uint8), torch.arange(4) % 3,
                         torch.arange(4))
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        clean_per_sample(Spy(), data, 4)
        robust_per_sample(Spy(), data, EvalAttack(eps=EPS, step_size=EPS, steps=1), 4)
        assert seen and all(flags == (False, False) for flags in seen)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_bf16_auto_falls_back_to_fp16_without_native_bf16(monkeypatch):
    """Before Ampere, bf16 is emulated (slow): `auto` takes fp16, an explicit bf16 is refused."""
    from advmem.engine.perf import resolve_perf
    from advmem.recipe import PerfConfig

    asked = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(
        including_emulation) or including_emulation)
    cuda = torch.device("cuda")
    assert resolve_perf(PerfConfig(), cuda).precision == "fp16"
    assert asked == [False]
    with pytest.raises(UserError, match="no native bf16"):
        resolve_perf(PerfConfig(precision="bf16"), cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_perf(PerfConfig(), cuda).precision == "bf16"


def test_compile_matches_eager(tmp_path, monkeypatch):
    """The compiled step (Dynamo graph capture, autograd.grad through it, requires_grad and
    train/eval switches) equals eager. The backend is aot_eager here; the inductor version of
    this test is opt-in (see below) because a cold inductor build takes ~70 s on 2 cores."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="aot_eager", **kw))
    row_a, w_a = one_epoch(tmp_path / "a")
    row_b, w_b = one_epoch(tmp_path / "b", perf={"compile": True})
    assert abs(row_a["train_loss"] - row_b["train_loss"]) < 1e-5
    assert torch.allclose(w_a, w_b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(os.environ.get("ADVMEM_TEST_INDUCTOR") != "1",
                    reason="cold torch.compile (inductor) takes ~70 s on 2 CPU cores; set ADVMEM_TEST_INDUCTOR=1")
def test_compile_inductor_matches_eager(tmp_path):
    row_a, w_a = one_epoch(tmp_path / "a")
    row_b, w_b = one_epoch(tmp_path / "b", perf={"compile": True})
    assert abs(row_a["train_loss"] - row_b["train_loss"]) < 1e-4
    assert torch.allclose(w_a, w_b, rtol=1e-3, atol=1e-4)


def test_cuda_graphs_without_a_gpu_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="perf.cuda_graphs needs a CUDA device"):
        make_trainer(tmp_path, perf={"cuda_graphs": True})


def test_perf_keys_are_validated():
    with pytest.raises(UserError, match="perf.precision"):
        recipe_from_dict({"perf": {"precision": "fp8"}})
    with pytest.raises(UserError, match="unknown key 'perf.compiled'"):
        recipe_from_dict({"perf": {"compiled": True}})


# -- evaluation on a subset during training, full test set at the end ------------------------------


@pytest.mark.parametrize("final_full", [True, False])
def test_final_epoch_evaluates_the_full_test_set(tmp_path, final_full):
    trainer = make_trainer(tmp_path, data={"test_size": 16}, optim={"epochs": 2},
                           eval={"final_full": final_full, "every": 1})
    trainer.run.check_start(resume=False, overwrite=False)
    trainer.run.prepare(trainer.recipe, trainer.bundle.info, overwrite=False)
    trainer.run.plot_curves = lambda rows: None  # matplotlib is not what this test is about
    trainer.fit()
    first, last = trainer.rows
    assert "test_full_nat_acc" not in first
    assert len(trainer.bundle.test) == 16
    if not final_full:
        assert "test_full_nat_acc" not in last
        return
    from advmem.data import build_data

    full = build_data(trainer.recipe.data.model_copy(update={"test_size": None}), "cpu").test
    assert len(full) == 64
    expected = clean_per_sample(trainer.model, full, 32)["correct"].float().mean().item()
    assert last["test_full_nat_acc"] == pytest.approx(expected, abs=1e-7)
    assert 0 <= last["test_full_rob_acc"] <= last["test_full_nat_acc"]
