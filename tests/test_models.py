"""Model registry and families: shapes on any input size, Normalize first, kwargs, param counts."""

from __future__ import annotations

import pytest
import torch

from advmem.errors import UserError
from advmem.models import MODEL_NAMES, Normalize, build_model, count_parameters, model_kwargs_of

# Overrides that keep the large families tiny so the shape tests run in seconds on CPU.
TINY = {
    "mlp": {"hidden": [16]},
    "small_cnn": {"width": 4, "hidden": 16},
    "preact_resnet18": {"width": 4},
    "resnet18": {"width": 4},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
    "wrn_28_10": {"depth": 10, "widen_factor": 1},
    "wrn_34_10": {"depth": 10, "widen_factor": 1},
    "vgg16": {},
}


def build(name: str, channels: int = 3, size=32, classes: int = 10, **kwargs):
    return build_model(
        name,
        in_channels=channels,
        num_classes=classes,
        image_size=size,
        mean=[0.5] * channels,
        std=[0.25] * channels,
        **kwargs,
    )


def test_every_name_has_tiny_overrides():
    assert MODEL_NAMES == sorted(MODEL_NAMES)
    assert set(TINY) == set(MODEL_NAMES)
    assert {"wrn_28_10", "wrn_34_10", "vgg16", "resnet18", "preact_resnet18", "small_cnn", "mlp"} <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape,classes", [((2, 1, 28, 28), 10), ((2, 3, 32, 32), 7), ((2, 1, 8, 8), 3)])
def test_output_shape(name, shape, classes):
    torch.manual_seed(0)
    n, c, h, w = shape
    model = build(name, channels=c, size=h, classes=classes, **TINY[name])
    model.train()
    out = model(torch.rand(shape))
    assert out.shape == (n, classes)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (n, classes)


def test_non_square_image_size():
    model = build("small_cnn", channels=1, size=(28, 12), **TINY["small_cnn"])
    assert model(torch.rand(2, 1, 28, 12)).shape == (2, 10)


def test_normalize_is_first_layer_and_correct():
    model = build_model(
        "small_cnn", in_channels=3, num_classes=10, image_size=8, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 2.0]
    )
    first = next(iter(model.children()))
    assert isinstance(first, Normalize) and model[0] is first and model.normalize is first
    x = torch.rand(2, 3, 8, 8)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(first(x), expected)
    keys = model.state_dict().keys()
    assert "normalize.mean" in keys and "normalize.std" in keys
    assert all(k.startswith(("normalize.", "net.")) for k in keys)
    # buffers, not parameters: the attack must not move them and the optimizer must not see them
    assert all(not n.startswith("normalize") for n, _ in model.named_parameters())
    # the forward pass really applies it: model(x) == net(normalize(x))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(expected))


def test_mean_std_length_checked():
    with pytest.raises(UserError, match="one per channel"):
        build_model("mlp", in_channels=3, num_classes=10, image_size=8, mean=[0.5], std=[0.5])
    with pytest.raises(UserError, match="positive"):
        build_model("mlp", in_channels=1, num_classes=10, image_size=8, mean=[0.5], std=[0.0])


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("mlp", {"hidden": [32]}),
        ("small_cnn", {"width": 8}),
        ("preact_resnet18", {"width": 8}),
        ("resnet18", {"width": 8}),
        ("wide_resnet", {"depth": 16, "widen_factor": 1}),
        ("wrn_28_10", {"depth": 10, "widen_factor": 2}),
        ("vgg16", {"batch_norm": False}),
    ],
)
def test_kwargs_override_changes_parameter_count(name, kwargs):
    defaults = build(name, size=8)
    changed = build(name, size=8, **kwargs)
    assert count_parameters(changed) != count_parameters(defaults)
    assert changed.arch_kwargs == {**model_kwargs_of(name), **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}}


def test_model_kwargs_of():
    assert model_kwargs_of("small_cnn") == {"width": 32, "hidden": 256}
    assert model_kwargs_of("mlp") == {"hidden": (256, 256)}
    assert model_kwargs_of("wrn_34_10") == {"depth": 34, "widen_factor": 10, "dropout": 0.0}
    assert model_kwargs_of("wrn_28_10")["depth"] == 28
    with pytest.raises(UserError, match="unknown model"):
        model_kwargs_of("nope")


def test_unknown_name():
    with pytest.raises(UserError) as e:
        build("resnet1000")
    msg = str(e.value)
    assert "unknown model 'resnet1000'" in msg
    assert "choose one of: " + ", ".join(MODEL_NAMES) in msg


def test_unknown_kwarg():
    with pytest.raises(UserError) as e:
        build("small_cnn", widht=8)
    msg = str(e.value)
    assert "'widht'" in msg and "width=32" in msg and "hidden=256" in msg


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("small_cnn", {"width": "32"}, "'width' must be an integer"),
        ("small_cnn", {"width": True}, "'width' must be an integer"),
        ("small_cnn", {"width": 0}, "'width' must be >= 1"),
        ("vgg16", {"batch_norm": 1}, "'batch_norm' must be true or false"),
        ("mlp", {"hidden": 64}, "'hidden' must be a list of integers"),
        ("wide_resnet", {"dropout": "x"}, "'dropout' must be a number"),
        ("wide_resnet", {"depth": 30, "widen_factor": 1}, "6n\\+4"),
        ("wrn_34_10", {"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_kwarg_values(name, kwargs, match):
    with pytest.raises(UserError, match=match):
        build(name, size=8, **kwargs)


def test_alias_accepts_overrides_and_int_dropout():
    model = build("wrn_34_10", size=8, depth=10, widen_factor=1, dropout=0)
    assert model.arch_kwargs == {"depth": 10, "widen_factor": 1, "dropout": 0.0}


def test_wrn_init():
    model = build("wide_resnet", size=8, depth=10, widen_factor=1)
    linear = model.net.fc
    assert torch.all(linear.bias == 0)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


@pytest.mark.parametrize(
    "name,published",
    [
        ("resnet18", 11_173_962),  # kuangliu/pytorch-cifar ResNet18
        ("preact_resnet18", 11_171_146),  # PreActResNet18 (Rice et al. add a final BN: +1024)
        ("wrn_34_10", 46_160_474),  # TRADES / Madry WRN-34-10
        ("wrn_28_10", 36_479_194),  # WRN-28-10
    ],
)
def test_full_size_parameter_counts(name, published):
    n = count_parameters(build(name, channels=3, size=32, classes=10))
    assert abs(n - published) / published < 0.01, (name, n)
