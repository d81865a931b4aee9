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


# ------------------------------------------------- issue 15, section 4: tracebacks and silent input


def recipe_text(root: Path, **changes) -> str:
    return write_recipe(root, **changes).read_text()


@pytest.mark.parametrize("make, match", [
    (lambda root: b"name: bad\ndescription: caf\xe9\n", "not UTF-8 text (byte 0xe9 at line 2)"),
    (lambda root: b"\xff\xfe" + "name: bad\n".encode("utf-16-le"), "not UTF-8"),
    (lambda root: ("a: " + "[" * 3000 + "]" * 3000 + "\n").encode(), "nested"),  # RecursionError in PyYAML
    (lambda root: ("a: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n").encode(), "nested"),
    (lambda root: ("model: {kwargs: {hidden: " + "[" * 40 + "]" * 40 + "}}\n").encode(), "more than 32 levels"),
    (lambda root: b"", "the recipe is empty"),
    (lambda root: b"# only a comment\n\n", "the recipe is empty"),
    (lambda root: b"{}\n", "the recipe is empty"),
    (lambda root: recipe_text(root).encode() + b"name: again\n", "key 'name' is given twice"),
    (lambda root: b"optim:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "key 'lr' is given twice in the same section (lines 2 and 4)"),
    (lambda root: b"x_unknown: 1\n" + b"#" * (2 << 20) + b"\n", "more than the 1 MB a recipe may be"),
])
def test_bad_recipe_text(tmp_path, make, match):
    path = tmp_path / "r.yaml"
    path.write_bytes(make(tmp_path))
    assert_clean_refusal(["train", str(path), "--quiet"], tmp_path, match=match)
    assert not (tmp_path / "runs").exists()


def test_duplicate_keys_in_a_list_of_mappings_and_merge_keys(tmp_path):
    from advmem.recipe import parse_recipe_text

    with pytest.raises(UserError, match=r"key 'a' is given twice .*lines 1 and 1"):
        parse_recipe_text("x: [{a: 1, a: 2}]\n", "r")
    # a YAML merge key is not a duplicate; an explicit key after it overrides the merged one
    assert parse_recipe_text("base: &b {lr: 1}\noptim: {<<: *b, lr: 2}\n", "r")["optim"] == {"lr": 2}


@pytest.mark.parametrize("changes, match", [
    ({"optim__epochs": 1e30}, "at most 100000 epochs"),
    ({"optim__epochs": 10**30}, "at most 100000 epochs"),
    ({"optim__epochs": 100_001}, "at most 100000 epochs"),
    ({"optim__epochs": "1e30"}, "optim.epochs"),
    ({"optim__epochs": True}, "optim.epochs: expected an integer, not the boolean true"),
    ({"optim__lr": True}, "optim.lr: expected a number, not the boolean true"),
    ({"optim__batch_size": True}, "optim.batch_size: expected an integer"),
    ({"seed": False}, "seed: expected an integer"),
    ({"optim__schedule__milestones": [True]}, "milestones: expected a list of integers"),
    ({"data__synthetic__n_train": True}, "data.synthetic.n_train: expected an integer"),
    ({"eval__attack__steps": True}, "eval.attack.steps: expected an integer"),
    ({"method": {"name": "trades", "beta": True}}, "method.beta: expected a number"),
    ({"data__synthetic__n_train": 1e13}, "data.synthetic (n_train 10000000000000"),
    ({"data__synthetic__image_size": 10**6}, "more than this machine's memory"),
    ({"model__kwargs": {"hidden": [10**13]}}, "parameters) needs about"),
    ({"output_root": "/etc/passwd"}, "/etc/passwd is a file, not a directory"),
    ({"output_root": "/proc/advmem-x"}, "cannot create the run directory /proc/advmem-x/bad"),
])
def test_recipes_that_were_accepted_or_crashed(tmp_path, changes, match):
    recipe = write_recipe(tmp_path, **changes)
    assert_clean_refusal(["train", str(recipe), "--quiet"], tmp_path, match=match)
    assert not (tmp_path / "runs").exists() and not Path("/proc/advmem-x").exists()


def test_numbers_written_as_strings_and_fractions_still_work():
    data = copy.deepcopy(BASE)
    data["attack"] = {"eps": "8/255", "step_size": "0.05", "steps": 1}
    data["optim"]["lr"] = "0.05"  # PyYAML reads 1e-3 as a string: pydantic still parses it
    data["optim"]["weight_decay"] = "1e-3"
    recipe = recipe_from_dict(data)
    assert recipe.attack.eps == "8/255" and recipe.optim.lr == 0.05 and recipe.optim.weight_decay == 1e-3
    assert recipe_from_dict({**copy.deepcopy(BASE), "deterministic": True}).deterministic is True
    assert recipe_from_dict({**copy.deepcopy(BASE), "perf": {"channels_last": False}}).perf.channels_last is False


def test_empty_name_is_refused(run, tmp_path):
    recipe = write_recipe(tmp_path)
    assert_clean_refusal(["train", str(recipe), "--name", ""], tmp_path, match="--name is empty")
    assert_clean_refusal(["train", str(recipe), "--name", " "], tmp_path, match="--name is empty")
    assert_clean_refusal(["train", "--resume", str(run), "--name", ""], tmp_path, match="--resume continues")


def test_eval_refuses_external_flags_on_an_advmem_checkpoint(run, tmp_path):
    for flags in (["--arch", "resnet18", "--dataset", "cifar10"], ["--norm", "L2"], ["--no-normalize"]):
        err = assert_clean_refusal(["eval", str(run), *flags, "--n-examples", "4"], tmp_path,
                                   match="is an advmem checkpoint")
        assert flags[0] in err
    err = assert_clean_refusal(["eval", str(run / "checkpoints" / "last.safetensors"), "--dataset", "cifar10"],
                               tmp_path, match="drop it")


def test_bad_bytes_in_run_files(run, tmp_path):
    recipe = (run / "recipe.yaml").read_bytes()
    (run / "recipe.yaml").write_bytes(recipe.replace(b"name:", b"name: \xff\nx_:", 1))
    assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="not UTF-8")
    (run / "recipe.yaml").write_bytes(recipe)

    sidecar = run / "checkpoints" / "last.json"
    good = sidecar.read_bytes()
    sidecar.write_bytes(good.replace(b'"format"', b'"\xff\xfeformat"', 1))
    assert_clean_refusal(["eval", str(run / "checkpoints" / "last.safetensors")], tmp_path, match="not UTF-8")
    sidecar.write_bytes(b"[" * 100_000 + b"]" * 100_000)  # RecursionError in json
    assert_clean_refusal(["eval", str(run / "checkpoints" / "last.safetensors")], tmp_path, match="not valid JSON")
    sidecar.write_bytes(b" " * (2 << 20) + good)
    assert_clean_refusal(["eval", str(run / "checkpoints" / "last.safetensors")], tmp_path, match="more than the 1 MB")
    sidecar.write_bytes(good)

    state = torch.load(run / "resume.pt", weights_only=True)
    torch.save({**state, "rows": [{"loss": 1.0}]}, run / "resume.pt")
    assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="rows lack 'epoch'")


@pytest.mark.parametrize("line", [b"garbage, not json", b"\x00\xff\xfe\x89PNG\r\n", b"[1, 2]", b"5"])
def test_report_with_a_bad_metrics_line(run, tmp_path, line):
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + line + b"\n")
    out = tmp_path / "report.html"
    assert_clean_refusal(["report", str(run), "-o", str(out)], tmp_path, match="metrics.jsonl:2: not a JSON object")
    assert_clean_refusal(["compare", str(run)], tmp_path, match="metrics.jsonl:2")
    assert not out.exists()


def test_an_empty_lock_says_what_it_is(run, tmp_path):
    (run / ".lock").write_text("")
    err = assert_clean_refusal(["train", "--resume", str(run)], tmp_path, match="is an empty lock file")
    assert "full disk" in err and "pid ?" not in err


def test_a_lock_that_cannot_be_written_is_not_left_behind(run, tmp_path, monkeypatch):
    import errno as errno_mod

    import advmem.engine.safety as safety

    def no_space(fd):
        raise OSError(errno_mod.ENOSPC, os.strerror(errno_mod.ENOSPC))

    monkeypatch.setattr(safety.os, "fsync", no_space)
    code, err = run_cli(["train", "--resume", str(run), "--quiet"], tmp_path)
    monkeypatch.undo()
    assert code == 2 and err.count("\n") == 1 and "cannot write the lock file" in err and "No space" in err, err
    assert not (run / ".lock").exists()


def test_disk_full_during_training(tmp_path, monkeypatch):
    """ENOSPC while writing epoch 2's last.safetensors: one line naming the file and the committed
    epoch (exit 1, a failure at run time); after space is freed the resumed run is bitwise equal to
    an uninterrupted one."""
    import errno as errno_mod

    from safetensors.torch import load_file

    import advmem.io as io_mod

    recipe = write_recipe(tmp_path, optim__epochs=3, optim__schedule__milestones=[2])
    real, calls = io_mod.atomic_write, []

    def atomic_write(path, write, mode="wb"):
        if Path(path).name == "last.safetensors":
            calls.append(path)
            if len(calls) == 2:
                def full(fh):
                    write(fh)
                    raise OSError(errno_mod.ENOSPC, os.strerror(errno_mod.ENOSPC))

                return real(path, full, mode)
        return real(path, write, mode)

    monkeypatch.setattr(io_mod, "atomic_write", atomic_write)
    code, err = run_cli(["train", str(recipe), "--quiet"], tmp_path)
    monkeypatch.undo()
    run = tmp_path / "runs" / "bad"
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "disk full (No space left on device) while writing" in err and "last.safetensors" in err, err
    assert "consistent at epoch 1" in err and f"advmem train --resume {run}" in err, err
    assert not list(run.rglob(".*.tmp")) and not (run / ".lock").exists()
    assert run_cli(["train", "--resume", str(run), "--quiet"], tmp_path)[0] == 0
    other = write_recipe(tmp_path, name="ref", optim__epochs=3, optim__schedule__milestones=[2])
    assert run_cli(["train", str(other), "--quiet"], tmp_path)[0] == 0
    a = load_file(str(run / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "runs" / "ref" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
