"""Bad input, everywhere: one clear line, exit code 2, no traceback, nothing changed on disk.

A property-based part mutates a valid recipe into hundreds of invalid ones (unknown keys at any
level, wrong types, out-of-range values, bad budgets, bad method names, contradictions); the
rest covers CLI arguments, dataset files, checkpoints and run directories one by one.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import io
import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advmem.cli import main
from advmem.errors import UserError
from advmem.recipe import recipe_from_dict

BASE = {
    "name": "bad", "seed": 0, "device": "cpu", "output_root": "OUT",
    "data": {"dataset": "synthetic", "synthetic": {"n_train": 48, "n_test": 16, "image_size": 4}, "val_size": 16},
    "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "method": {"name": "pgd_at"},
    "attack": {"eps": "0.1", "step_size": "0.05", "steps": 1},
    "optim": {"epochs": 2, "batch_size": 16, "lr": 0.05, "schedule": {"name": "multistep", "milestones": [1]}},
    "eval": {"train_subset": 16, "batch_size": 64, "attack": {"steps": 1}},
}

# Values that are invalid at each leaf (types pydantic will not coerce, out-of-range values, bad literals).
BAD_LEAVES: dict[tuple[str, ...], list] = {
    ("name",): ["", "a/b", "../up", " lead", 5, None, "a\nb"],
    ("seed",): ["x", 1.5, None, [1], -1, 2**70],
    ("device",): ["tpu", 3, None],
    ("deterministic",): ["perhaps", [True], None, 2],
    ("output_root",): [5, None, ["runs"]],
    ("data", "dataset"): ["mnist", 1, None],
    ("data", "val_size"): [-1, "a", 1.5],
    ("data", "train_size"): [0, -5, "x"],
    ("data", "test_size"): [0, "all"],
    ("data", "augment"): ["rotate", 1],
    ("data", "crop_padding"): [-1, "4px"],
    ("data", "synthetic", "n_train"): [0, -1, "many"],
    ("data", "synthetic", "num_classes"): [1, 0],
    ("model", "name"): [5, None, ["mlp"]],
    ("model", "kwargs"): ["x", [1], 3],
    ("method",): [5, [], None, {"nam": "pgd_at"}, {"name": "pgd_att"}, {"name": 3}, {"name": ["pgd_at"]},
                  {"name": "trades", "beta": -1}, {"name": "trades", "beta": "big"}, {"name": "pgd_at", "beta": 6},
                  {"name": "trades", "beta": float("inf")}],
    ("attack", "norm"): ["L3", "linf", 2, None],
    ("attack", "eps"): ["8/0", "abc", -0.1, True, "2", [8, 255], None, "nan", float("inf"), "1e999"],
    ("attack", "step_size"): ["0", 0, "-1/255", "x/255", float("nan")],
    ("attack", "steps"): [0, -3, 2.5, "ten"],
    ("attack", "start"): ["random", 1],
    ("attack", "bn_mode"): ["freeze"],
    ("optim", "epochs"): [0, -1, "x", 1.5],
    ("optim", "batch_size"): [0, "x", -16],
    ("optim", "lr"): [0, -0.1, "fast", float("inf"), float("nan")],
    ("optim", "momentum"): [1.0, -0.1, 2],
    ("optim", "weight_decay"): [-1, "none"],
    ("optim", "label_smoothing"): [1.0, -0.5],
    ("optim", "nesterov"): ["perhaps", 3],
    ("optim", "schedule", "name"): ["linear", 0],
    ("optim", "schedule", "milestones"): [[999], [1, 1], [0], "5", [-1], [1.5]],  # absolutely bad, whatever the epochs
    ("optim", "schedule", "gamma"): [0, -1],
    ("eval", "every"): [0, "often"],
    ("eval", "train_subset"): [-1],
    ("eval", "batch_size"): [0],
    ("eval", "attack", "steps"): [0],
    ("eval", "attack", "restarts"): [0],
    ("eval", "attack", "eps"): ["bad", -1],
    ("reliability", "on_nonfinite"): ["ignore", True],
    ("distributed", "timeout_s"): [1, "long"],
    ("distributed", "sync_bn"): ["perhaps"],
    ("distributed", "backend"): ["mpi"],
}
SECTIONS = [(), ("data",), ("data", "synthetic"), ("model",), ("method",), ("attack",), ("optim",),
            ("optim", "schedule"), ("eval",), ("eval", "attack"), ("reliability",), ("distributed",)]
# Settings valid one by one that contradict each other.
CONTRADICTIONS = [
    {("optim", "nesterov"): True, ("optim", "momentum"): 0.0},
    {("optim", "schedule", "name"): "step"},  # step schedule without step_size
    {("optim", "epochs"): 3, ("optim", "schedule", "milestones"): [1, 5]},
    {("attack", "norm"): "Linf", ("attack", "eps"): "16/8"},
]


def node(data: dict, path: tuple) -> dict:
    for part in path:
        data = data.setdefault(part, {}) if isinstance(data.get(part, {}), dict) else data[part]
    return data


def put(data: dict, path: tuple, value) -> None:
    node(data, path[:-1])[path[-1]] = value


bad_leaf = st.sampled_from(sorted(BAD_LEAVES)).flatmap(
    lambda path: st.sampled_from(BAD_LEAVES[path]).map(lambda value: ("set", path, value)))
unknown_key = st.tuples(st.sampled_from(SECTIONS), st.one_of(
    st.text(min_size=1, max_size=8).map(lambda t: "x_" + t), st.integers(-5, 5))).map(
    lambda pair: ("unknown", pair[0], pair[1]))
contradiction = st.sampled_from(range(len(CONTRADICTIONS))).map(lambda i: ("contradiction", i, None))
mutation = st.one_of(bad_leaf, unknown_key, contradiction)


def mutate(mutations) -> dict:
    data = copy.deepcopy(BASE)
    for kind, where, value in mutations:
        if kind == "set":
            put(data, where, value)
        elif kind == "unknown":
            target = node(data, where) if where != ("method",) else data["method"]
            target[value] = 1
        else:
            for path, v in CONTRADICTIONS[where].items():
                put(data, path, v)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=3))
def test_invalid_recipes_raise_one_line_user_error(mutations):
    data = mutate(mutations)
    with pytest.raises(UserError) as info:
        recipe_from_dict(data)
    message = str(info.value)
    assert message and "\n" not in message and "Traceback" not in message


def tree_digest(root: Path) -> str:
    """Hash of every path, file content and mtime under root: 'nothing changed on disk'."""
    h = hashlib.sha256()
    if root.exists():
        for p in sorted(root.rglob("*")):
            h.update(str(p.relative_to(root)).encode())
            if p.is_file():
                h.update(p.read_bytes())
                h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    err = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    finally:
        os.chdir(old)
    return code, err.getvalue()


def assert_clean_refusal(argv: list[str], root: Path, *, match: str = "") -> str:
    before = tree_digest(root)
    code, err = run_cli(argv, root)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("advmem: error: ") and "Traceback" not in err, err
    assert match in err, err
    assert tree_digest(root) == before, "a refused command changed files on disk"
    return err


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=2))
def test_invalid_recipes_via_cli(mutations):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = mutate(mutations)
        if isinstance(data.get("output_root"), str):
            data["output_root"] = str(root / "runs")
        (root / "r.yaml").write_text(yaml.safe_dump(data))
        assert_clean_refusal(["train", str(root / "r.yaml"), "--quiet"], root)
        assert not (root / "runs").exists()
        code, err = run_cli(["train", str(root / "r.yaml"), "--quiet", "--debug"], root)
        assert code == 2 and "Traceback" in err  # --debug shows where it came from


# ----------------------------------------------------------------------------------- CLI, setup


def write_recipe(root: Path, **changes) -> Path:
    data = copy.deepcopy(BASE)
    data["output_root"] = str(root / "runs")
    for dotted, value in changes.items():
        put(data, tuple(dotted.split("__")), value)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("argv_tail, match", [
    (["--frobnicate"], "unrecognized arguments"),
    (["--set", "optim.lr"], "malformed --set"),
    (["--set", "optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    (["--set", "optim.lr.x=1"], "is a value, not a section"),
    (["--set", "data.val_size=100"], "val_size 100"),  # larger than the 48 training images
    (["--set", "model.kwargs.widht=4"], "has no kwarg 'widht'"),
    (["--set", "model.name=resnet999"], "unknown model"),
    (["--set", "device=cuda"], "no CUDA GPU") if not torch.cuda.is_available() else (["--set", "device=tpu"], "device"),
    (["--set", "data.dataset=fashion-mnist", "--set", "data.data_root=DATA"], "truncated"),
])
def test_bad_arguments_and_setup_errors(tmp_path, argv_tail, match):
    data = tmp_path / "data"
    data.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data / stem).write_bytes(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 10, 28, 28) + b"\0" * 100)
    argv_tail = [a.replace("DATA", str(data)) for a in argv_tail]
    recipe = write_recipe(tmp_path)
    assert_clean_refusal(["train", str(recipe), *argv_tail], tmp_path, match=match)
    assert not (tmp_path / "runs").exists()


def test_bad_recipe_files_and_commands(tmp_path):
    assert_clean_refusal(["train", str(tmp_path / "missing.yaml")], tmp_path, match="not found")
    (tmp_path / "broken.yaml").write_text("optim: {lr: [\n")
    assert_clean_refusal(["train", str(tmp_path / "broken.yaml")], tmp_path, match="not valid YAML")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert_clean_refusal(["train", str(tmp_path / "list.yaml")], tmp_path, match="mapping")
    assert_clean_refusal(["frobnicate"], tmp_path, match="invalid choice")
    assert_clean_refusal(["train"], tmp_path, match="a recipe is required")
    assert_clean_refusal(["eval", str(tmp_path / "nothing")], tmp_path, match="no such")


def test_wrong_shape_dataset_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    header3 = lambda n: struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", n, 28, 28)  # noqa: E731
    header1 = lambda n: struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", n)  # noqa: E731
    (data / "train-images-idx3-ubyte").write_bytes(header3(4) + b"\0" * 4 * 784)
    (data / "train-labels-idx1-ubyte").write_bytes(header1(5) + b"\0" * 5)  # 5 labels for 4 images
    (data / "t10k-images-idx3-ubyte").write_bytes(header3(2) + b"\0" * 2 * 784)
    with gzip.open(data / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header1(2) + b"\0" * 2)
    recipe = write_recipe(tmp_path, data__dataset="fashion-mnist", data__data_root=str(data), data__val_size=0)
    assert_clean_refusal(["train", str(recipe)], tmp_path, match="disagree")


# ------------------------------------------------------------------------- checkpoints, run dirs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished run (1 epoch), copied per test so tests can damage it."""
    root = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(root, optim__epochs=1, optim__schedule__milestones=[])
    code, err = run_cli(["train", str(recipe), "--quiet"], root)
    assert code == 0, err
    return root / "runs" / "bad"


@pytest.fixture
def run(trained, tmp_path):
    import shutil

    target = tmp_path / "runs" / "bad"
    shutil.copytree(trained, target)
    return target


def test_damaged_checkpoints(run, tmp_path):
    ckpt = run / "checkpoints"
    weights = (ckpt / "last.safetensors").read_bytes()
    (ckpt / "last.safetensors").write_bytes(weights[: len(weights) // 2])
    assert_clean_refusal(["eval", str(ckpt / "last.safetensors")], tmp_path, match="truncated or corrupt")
    (ckpt / "last.safetensors").write_bytes(weights)

    sidecar = json.loads((ckpt / "last.json").read_text())
    wider = copy.deepcopy(sidecar)
    wider["architecture"]["kwargs"] = {"hidden": [9]}
    (ckpt / "last.json").write_text(json.dumps(wider))
    assert_clean_refusal(["eval", str(ckpt / "last.safetensors")], tmp_path, match="do not fit architecture")

    deeper = copy.deepcopy(sidecar)
    deeper["architecture"]["kwargs"] = {"hidden": [8, 10]}  # same shapes, one layer more
    (ckpt / "last.json").write_text(json.dumps(deeper))
    assert_clean_refusal(["eval", str(ckpt / "last.safetensors")], tmp_path, match="missing")

    no_arch = {k: v for k, v in sidecar.items() if k != "architecture"}
    (ckpt / "last.json").write_text(json.dumps(no_arch))
    assert_clean_refusal(["eval", str(ckpt / "last.safetensors")], tmp_path, match="lacks the architecture")

    (ckpt / "last.json").write_text(json.dumps({**sidecar, "format": "advmem-checkpoint/7"}))
    assert_clean_refusal(["eval", str(ckpt / "last.safetensors")], tmp_path, match="newer advmem")

    (ckpt / "last.json").write_text('{"format": "advmem-check')
    assert_clean_refusal(["eval", str(ckpt / "last.safetensors")], tmp_path, match="not valid JSON")
    (ckpt / "last.json").unlink()
    # The weights file embeds its metadata (a kill between the two writes must not orphan it),
    # so a missing sidecar is not an error; a file with neither is.
    assert main(["eval", str(ckpt / "last.safetensors"), "--n-examples", "4", "--steps", "1", "--no-checks",
                 "--quiet"]) == 0
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(ckpt / "last.safetensors")), str(ckpt / "last.safetensors"))
    assert_clean_refusal(["eval", str(ckpt / "last.safetensors")], tmp_path, match="sidecar not found")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_damaged_resume_states(run, tmp_path):
    resume = run / "resume.pt"
    good = resume.read_bytes()
    resume.write_bytes(good[:100])
    assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="corrupt")
    torch.save({"epoch": 1, "model": _RunsCode()}, resume)
    assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="never runs code")
    assert not (tmp_path / "PWNED").exists()
    state = torch.load(io.BytesIO(good), weights_only=True)
    torch.save({**state, "format": 99}, resume)
    assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="newer advmem")
    state["model"] = {k + ".x": v for k, v in state["model"].items()}
    torch.save(state, resume)
    assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="does not match this run")


def test_bad_run_directories(run, tmp_path):
    assert_clean_refusal(["train", "--resume", str(tmp_path / "nope")], tmp_path, match="no such run directory")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_clean_refusal(["train", "--resume", str(foreign)], tmp_path, match="not an advmem run directory")
    recipe = write_recipe(tmp_path, name="foreign", output_root=str(tmp_path))
    assert_clean_refusal(["train", str(recipe), "--overwrite"], tmp_path, match="refusing to delete")
    assert_clean_refusal(["train", str(recipe)], tmp_path, match="exists")
    assert_clean_refusal(["train", "--resume", str(run), "--name", "x"], tmp_path, match="--resume continues")
    assert_clean_refusal(["train", "--resume", str(run), "--set", "optim.lr=1"], tmp_path, match="cannot change")

    (run / "run.json").write_text(json.dumps({"format": 2, "advmem_version": "9.0"}))
    assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="newer advmem")
    assert_clean_refusal(["eval", str(run)], tmp_path, match="newer advmem")
    (run / "run.json").write_text(json.dumps({"format": 1}))

    recipe_yaml = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe_yaml["optim"]["lr"] = 0.5
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe_yaml))
    assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="recipe.yaml differs")
