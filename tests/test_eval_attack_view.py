"""advmem eval attacks through the bit-exact attack view (max-pool before ReLU, NHWC): every flag
is the same as attacking the model as it is, pyautoattack's included, saturated pixels included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advmem.attacks.attack_view import ViewOptions, folded_view
from advmem.evaluation import evaluate_model
from advmem.evaluation.attacks import AttackSettings, exact_model, exact_view
from advmem.models import build_model


@pytest.fixture(scope="module")
def points():
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=10, image_size=12, mean=[0.5], std=[0.25],
                        width=4, hidden=32).eval()
    with torch.no_grad():  # running statistics that are not the identity, so BatchNorm matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(12, 1, 12, 12)
    x[:4] = (x[:4] > 0.5).float()  # saturated pixels: the projection clips at 0 and 1
    with torch.no_grad():
        y = model(x).argmax(1)  # every point clean-correct, so the attacks decide the flags
    return model, x, y


def test_the_view_rewrites_the_pools_and_keeps_forward_and_gradient_bitwise(points):
    model, x, y = points
    view = folded_view(model, ViewOptions(fold_bn=False, fast_pool=True))
    assert view is not None and view.pools > 0 and view.swapped > 0
    with exact_view():
        assert exact_model(model) is view
    assert exact_model(model) is model  # outside the context: the model itself
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = model(a), view(b)
    loss = torch.nn.functional.cross_entropy
    loss(out_a, y).backward()
    loss(out_b, y).backward()
    assert torch.equal(out_a, out_b) and torch.equal(a.grad, b.grad)


def test_white_box_flags_identical_with_and_without_the_view(points):
    model, x, y = points
    settings = AttackSettings(eps=0.05, steps=10, batch_size=8, seed=1)
    kw = dict(attacks=["clean", "fgsm", "pgd", "pgd-cw"], settings=settings, num_classes=10,
              checks=False)
    on = evaluate_model(model, x, y, attack_view=True, **kw)
    off = evaluate_model(model, x, y, attack_view=False, **kw)
    for name in kw["attacks"]:
        assert torch.equal(on["flags"][name], off["flags"][name]), name
    assert 0 < on["robust_acc"] < 1, "the budget should break some points and not others"
    assert torch.equal(on["robust"], off["robust"])


def test_autoattack_through_the_view_equals_pyautoattack_on_the_model(points, monkeypatch):
    """evaluate_model hands pyautoattack the view; its flags equal pyautoattack called directly on
    the model (APGD iterations cut to 10 in both so the test takes seconds)."""
    import advmem.evaluation.autoattack as aa_module
    from pyautoattack import AutoAttack

    model, x, y = points
    given = []
    make = aa_module.make_autoattack

    def short(m, **kw):
        given.append(m)
        aa = make(m, **kw)
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = 10
        return aa

    monkeypatch.setattr(aa_module, "make_autoattack", short)
    settings = AttackSettings(eps=0.02, batch_size=12, seed=2)
    res = evaluate_model(model, x, y, attacks=["clean", "autoattack-lite"], settings=settings, num_classes=10,
                         checks=False)
    assert given and type(given[0]).__name__ == "FoldedView"
    assert not any(m.training for m in model.modules()), "the evaluation left BatchNorm in training mode"
    aa = AutoAttack(model, version="custom", attacks=["apgd-ce", "apgd-t"], eps=0.02, norm="Linf", seed=2,
                    device="cpu")
    aa.apgd.n_restarts = aa.apgd_targeted.n_restarts = 1
    aa.apgd_targeted.n_target_classes = 9
    aa.apgd.n_iter = aa.apgd_targeted.n_iter = 10
    aa.verbose = False
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=12)
    direct = (y_adv == y).numpy()
    assert 0 < direct.mean() < 1, direct
    np.testing.assert_array_equal(res["flags"]["autoattack-lite"].numpy(), direct)
