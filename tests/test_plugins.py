"""Bring your own model, method or dataset (issue 16, item 8), and a quiet exit on a closed pipe.

User code lives in packages written to tmp_path: named in a recipe as "module:attr", registered by
the recipe's `imports:`, or an installed plugin (a dist-info with an entry point, on sys.path).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SRC, run_cli, tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

NETS = '''
import torch
from torch import nn


class MyNet(nn.Module):
    """A user's network: it names the data arguments it wants; `width` is its own kwarg."""

    def __init__(self, in_channels, num_classes, image_size, width=8):
        super().__init__()
        h, w = image_size
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, width), nn.ReLU(),
                                  nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


def make_net(num_classes, depth):
    """A factory with a required kwarg and no image_size: it gets what it names."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def bad_factory(num_classes):
    return "not a module"


class NotAModel:
    pass


INSTANCE = nn.Linear(2, 2)
CONSTANT = 3
'''

PLUGINS = '''
from advmem.data.sources import DatasetReader, Synthetic
from advmem.methods.pgd_at import PGDAT
from advmem.models import MODELS
from advmem.recipe.method import METHODS, MethodConfig
from typing import Literal

from {pkg}.nets import MyNet


@MODELS.register("{pkg}_net")
def build(in_channels, num_classes, image_size, *, width=8):
    return MyNet(in_channels, num_classes, image_size, width=width)


class Config(MethodConfig):
    name: Literal["{pkg}_method"] = "{pkg}_method"


@METHODS.register("{pkg}_method")
class MyMethod(PGDAT):
    Config = Config


@DATASETS_register
class MyData(Synthetic):
    num_classes = None
'''.replace("@DATASETS_register", "from advmem.data.config import DATASETS\n\n\n@DATASETS.register(\"{pkg}_data\")")


def write_package(root: Path, pkg: str, *, broken: bool = False) -> Path:
    """`root/pkg/` with nets.py (a model, a factory and wrong objects) and advmem_plugins.py, which
    registers a model, a method and a dataset named after the package."""
    (root / pkg).mkdir(parents=True)
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "nets.py").write_text(NETS)
    (root / pkg / "advmem_plugins.py").write_text(PLUGINS.format(pkg=pkg))
    (root / pkg / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    return root


def forget(pkg: str) -> None:
    """As if in a new process: the package's modules and the names it registered are gone."""
    from advmem.data.config import DATASETS
    from advmem.models import MODELS
    from advmem.recipe.method import METHODS

    for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[name]
    MODELS.unregister(f"{pkg}_net")
    METHODS.unregister(f"{pkg}_method")
    DATASETS.unregister(f"{pkg}_data")
    for registry in (MODELS, METHODS, DATASETS):
        registry._objects.clear()


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    """A fresh package on sys.path, named after the test (so no two tests share a module), forgotten afterwards."""
    pkg = "userpkg_" + re.sub(r"\W", "_", tmp_path.name)
    monkeypatch.syspath_prepend(str(write_package(tmp_path / "code", pkg)))
    yield pkg
    forget(pkg)


def one_epoch(**overrides) -> dict:
    return tiny_recipe(**{"optim.epochs": 1, "optim.schedule.milestones": [], **overrides})


def test_user_model_named_in_a_recipe_trains_evaluates_and_exports_from_the_cli(tmp_path):
    pkg = "byo_cli_pkg"
    code = write_package(tmp_path / "code", pkg)
    recipe = one_epoch(**{"model.name": f"{pkg}.nets:MyNet", "model.kwargs": {"width": 6}, "name": "mine"})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    train = run_cli(["train", "r.yaml", "--quiet"], tmp_path, pythonpath=(code,))
    assert train.returncode == 0, train.stderr
    run = tmp_path / "runs" / "mine"
    record = json.loads((run / "user_code.json").read_text())
    nets = next(m for m in record["modules"] if m["module"] == f"{pkg}.nets")
    assert Path(nets["file"]) == (code / pkg / "nets.py").resolve()
    assert nets["sha256"] == __import__("hashlib").sha256((code / pkg / "nets.py").read_bytes()).hexdigest()
    sidecar = json.loads((run / "checkpoints" / "best.json").read_text())
    assert sidecar["architecture"]["name"] == f"{pkg}.nets:MyNet" and sidecar["architecture"]["kwargs"] == {"width": 6}
    assert sidecar["user_code"] == record

    ev = run_cli(["eval", str(run), "--n-examples", "16", "--steps", "2", "--quiet"], tmp_path, pythonpath=(code,))
    assert ev.returncode == 0, ev.stderr
    assert json.loads((run / "checkpoints" / "best.eval.json").read_text())["n_examples"] == 16

    out = run_cli(["export", str(run), "--out", str(tmp_path / "export")], tmp_path, pythonpath=(code,))
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)
    # the exported file imports the user's module, not advmem: load it with only the user's code on the path
    probe = (f"import sys, torch; sys.path.insert(0, {str(Path(paths['model']).parent)!r}); "
             f"from {Path(paths['model']).stem} import load_model; torch.manual_seed(0); x = torch.rand(5, 1, 8, 8); "
             f"torch.save(load_model()(x), {str(tmp_path / 'logits.pt')!r}); torch.save(x, {str(tmp_path / 'x.pt')!r})")
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    loaded = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    sys.path.insert(0, str(code))
    try:
        from advmem.engine.checkpoint import build_from_checkpoint

        model, _ = build_from_checkpoint(run / "checkpoints" / "best")
        with torch.no_grad():
            expected = model(torch.load(tmp_path / "x.pt"))
        assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)
    finally:
        sys.path.remove(str(code))
        forget(pkg)

    # without the user's code on the path: one line naming the module and the fix, exit 2
    for args in (["eval", str(run), "--n-examples", "8"], ["export", str(run)]):
        res = run_cli(args, tmp_path / "code" / pkg)
        assert res.returncode == 2, res.stderr
        line = res.stderr.strip()
        assert "\n" not in line and f"module {pkg} not found" in line and "PYTHONPATH" in line, line


def test_imports_register_a_model_method_and_dataset_that_eval_imports_again(tmp_path, user_pkg):
    from advmem.engine.checkpoint import build_from_checkpoint, load_weights
    from advmem.recipe import recipe_from_dict
    from advmem.training import train

    recipe = recipe_from_dict(one_epoch(**{"imports": [f"{user_pkg}.advmem_plugins"], "model.name": f"{user_pkg}_net",
                                           "model.kwargs": {"width": 5}, "method": {"name": f"{user_pkg}_method"},
                                           "data.dataset": f"{user_pkg}_data"}))
    run, summary = train(recipe, run_root=tmp_path / "runs", quiet=True)
    assert summary["method"] == f"{user_pkg}_method" and summary["dataset"] == f"{user_pkg}_data"
    record = json.loads(run.user_code_path.read_text())
    assert record["imports"] == [f"{user_pkg}.advmem_plugins"]
    assert {m["module"] for m in record["modules"]} >= {f"{user_pkg}.advmem_plugins", f"{user_pkg}.nets"}
    assert "imports:" in run.recipe_path.read_text()

    forget(user_pkg)  # a new process: nothing is registered until the recorded imports run again
    model, meta = build_from_checkpoint(run.checkpoints / "best")
    assert f"{user_pkg}.advmem_plugins" in sys.modules
    state = load_weights(run.checkpoints / "best")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert run.load_recipe().hash() == recipe.hash()

    # an edited module still loads, with a note that it changed since the run recorded it
    forget(user_pkg)
    nets = tmp_path / "code" / user_pkg / "nets.py"
    nets.write_text(nets.read_text() + "\n# edited\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        build_from_checkpoint(run.checkpoints / "best")
    assert f"advmem: note: {user_pkg}.nets has changed since" in err.getvalue()


def test_an_installed_plugin_is_found_by_its_entry_point_and_loaded_only_when_a_recipe_names_it(tmp_path, monkeypatch):
    from advmem.models import MODELS
    from advmem.plugins import installed_plugins, run_record
    from advmem.recipe import recipe_from_dict
    from advmem.errors import UserError

    site = tmp_path / "site"
    dist = site / "fakeplug-1.2.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[advmem.plugins]\nfake = fakeplug_mod\nfakefn = fakeplug_mod:register\n")
    (dist / "top_level.txt").write_text("fakeplug_mod\n")
    (site / "fakeplug_mod.py").write_text(textwrap.dedent('''
        from advmem.models import MODELS
        from torch import nn

        @MODELS.register("fake_net")
        def fake_net(in_channels, num_classes, image_size, *, width=4):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size[0] * image_size[1], num_classes))

        def register():  # the other kind of entry point: a function, called once
            MODELS.register("fake_net_fn")(fake_net)
    '''))
    monkeypatch.syspath_prepend(str(site))
    try:
        assert installed_plugins()["fake"].value == "fakeplug_mod"
        recipe_from_dict(one_epoch())  # a recipe that does not name it imports nothing
        assert "fakeplug_mod" not in sys.modules and "fake_net" not in MODELS
        with pytest.raises(UserError, match=r"plugins: 'nope' is not an installed advmem plugin; installed: .*fake"):
            recipe_from_dict(one_epoch(plugins=["nope"]))
        recipe = recipe_from_dict(one_epoch(plugins=["fake"], **{"model.name": "fake_net"}))
        assert "fakeplug_mod" in sys.modules and "fake_net" in MODELS
        record = run_record(recipe.imports, recipe.plugins, [MODELS.get("fake_net").builder])
        assert record["plugins"] == [{"plugin": "fake", "entry_point": "fakeplug_mod", "distribution": "fakeplug",
                                      "version": "1.2.3"}]
        module = next(m for m in record["modules"] if m["module"] == "fakeplug_mod")
        assert module["distribution"] == "fakeplug" and module["version"] == "1.2.3" and "sha256" in module
        assert "fake_net_fn" not in MODELS
        recipe_from_dict(one_epoch(plugins=["fakefn"], **{"model.name": "fake_net_fn"}))
        recipe_from_dict(one_epoch(plugins=["fakefn"]))  # once per process: no "registered twice"
        assert "fake_net_fn" in MODELS
    finally:
        sys.modules.pop("fakeplug_mod", None)
        from advmem import plugins

        for name in ("fake", "fakefn"):
            plugins._loaded_plugins.pop(name, None)
        MODELS.unregister("fake_net")
        MODELS.unregister("fake_net_fn")


BAD_NAMES = [
    ({"model.name": "nosuch_pkg_xyz.nets:Net"}, "nosuch_pkg_xyz.nets:Net: module nosuch_pkg_xyz not found; install"),
    ({"model.name": "{pkg}.nets:MyNte"}, "{pkg}.nets:MyNte: {pkg}.nets has no attribute MyNte; did you mean MyNet?"),
    ({"model.name": "{pkg}.nets:NotAModel"}, "NotAModel is a class but not an nn.Module subclass"),
    ({"model.name": "{pkg}.nets:INSTANCE"}, "{pkg}.nets:INSTANCE: is an nn.Module instance, not a class or factory"),
    ({"model.name": "{pkg}.nets:CONSTANT"}, "is an object of type int, not an nn.Module subclass"),
    ({"model.name": "{pkg}.nets:bad_factory"}, "{pkg}.nets:bad_factory: returned a str, not an nn.Module"),
    ({"model.name": "{pkg}.nets:make_net"}, "model '{pkg}.nets:make_net' needs 'depth'; set model.kwargs.depth"),
    ({"model.name": "{pkg}.nets:MyNet", "model.kwargs": {"widht": 3}}, "has no kwarg 'widht'; accepted kwargs: width=8"),
    ({"model.name": "{pkg}.nets:"}, "must be module:attr"),
    ({"method": {"name": "{pkg}.nets:MyNet"}}, "{pkg}.nets:MyNet: is not a training method"),
    ({"data.dataset": "{pkg}.nets:MyNet"}, "{pkg}.nets:MyNet: is not a dataset reader"),
    ({"imports": ["{pkg}.broken"]}, "imports: {pkg}.broken: importing {pkg}.broken failed: RuntimeError: boom at import"),
    ({"imports": ["{pkg}.nowhere"]}, "imports: {pkg}.nowhere: module {pkg}.nowhere not found"),
    ({"imports": "{pkg}.nets"}, "imports must be a list of names, e.g. imports: [mypkg.advmem_plugins]"),
]


@pytest.mark.parametrize("overrides, message", BAD_NAMES, ids=[m[:40] for _, m in BAD_NAMES])
def test_bad_names_are_one_line_user_errors(user_pkg, overrides, message):
    from advmem.errors import UserError
    from advmem.models import build_model
    from advmem.recipe import recipe_from_dict

    overrides = json.loads(json.dumps(overrides).replace("{pkg}", user_pkg))
    with pytest.raises(UserError) as err:
        recipe = recipe_from_dict(one_epoch(**{"model.kwargs": {}, **overrides}))
        build_model(recipe.model.name, in_channels=1, num_classes=4, image_size=8, mean=[0.5], std=[0.25],
                    **recipe.model.kwargs)
    text = str(err.value)
    assert "\n" not in text and message.replace("{pkg}", user_pkg) in text, text


def test_a_user_name_that_clashes_with_a_built_in_one_is_a_user_error(tmp_path, monkeypatch):
    from advmem.errors import UserError
    from advmem.recipe import recipe_from_dict

    (tmp_path / "clash_mod.py").write_text("from advmem.models import MODELS\n\n"
                                           "@MODELS.register('small_cnn')\ndef f(in_channels, num_classes, image_size):\n"
                                           "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(UserError, match="imports: clash_mod: importing clash_mod failed: ValueError: model "
                                            "'small_cnn' registered twice"):
            recipe_from_dict(one_epoch(imports=["clash_mod"]))
    finally:
        sys.modules.pop("clash_mod", None)


def test_bad_name_from_the_cli_is_one_line_exit_2(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(one_epoch(**{"model.name": "nosuch_pkg_xyz:Net"})))
    res = run_cli(["train", "r.yaml"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "advmem: error: nosuch_pkg_xyz:Net: module nosuch_pkg_xyz not found; install the package that provides it, "
        "or put the folder that holds nosuch_pkg_xyz/ on PYTHONPATH (PYTHONPATH=DIR advmem ...)"]
    assert not (tmp_path / "runs").exists()


def test_python_api_trains_and_evaluates_a_module_object(tmp_path, user_pkg):
    import advmem
    from advmem.engine.checkpoint import load_weights
    from advmem.errors import UserError

    nets = __import__(f"{user_pkg}.nets", fromlist=["MyNet"])
    torch.manual_seed(0)
    net = nets.MyNet(1, 4, (8, 8), width=7)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run, summary = advmem.train(one_epoch(name="obj", **{"model.kwargs": {}}), model=net, run_root=tmp_path / "runs", quiet=True)
    assert summary["complete"]
    last = load_weights(run.checkpoints / "last")
    trained = {k: v for k, v in net.state_dict().items()}
    assert all(torch.equal(last[f"net.{k}"], v) for k, v in trained.items())  # the object itself was trained
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    name = run.load_recipe().model.name
    assert name == f"<python object {user_pkg}.nets.MyNet>"
    record = json.loads(run.user_code_path.read_text())
    assert record["python_object"]["rebuildable"] is False and "advmem.evaluate" in record["python_object"]["note"]

    res = run_cli(["eval", str(run.path), "--n-examples", "8"], tmp_path)  # the CLI cannot rebuild it: it says so
    assert res.returncode == 2 and "\n" not in res.stderr.strip()
    assert "is a Python object" in res.stderr and "advmem.evaluate(RUN, model=obj)" in res.stderr, res.stderr

    results = advmem.evaluate(run.path, model=net, attacks=["clean", "pgd"], n_examples=16, steps=2, quiet=True,
                              device="cpu")
    assert [r["epoch"] for r in results] == [1, 1] and 0 <= results[0]["clean_acc"] <= 1
    assert all(torch.equal(net.state_dict()[k], trained[k]) for k in trained)  # evaluated on copies

    with pytest.raises(UserError, match="cannot apply to an nn.Module instance"):
        advmem.train(one_epoch(name="obj2", **{"model.kwargs": {"width": 3}}), model=net, run_root=tmp_path / "runs")

    # a class defined in an importable module is recorded by its name, so the recipe rebuilds it
    run2, _ = advmem.train(one_epoch(name="cls", **{"model.kwargs": {"width": 3}}), model=nets.MyNet,
                           run_root=tmp_path / "runs", quiet=True)
    assert run2.load_recipe().model.name == f"{user_pkg}.nets:MyNet"
    assert "python_object" not in json.loads(run2.user_code_path.read_text())


def test_built_in_runs_record_no_user_code_and_stay_torch_free_to_read(tmp_path):
    from advmem.recipe import recipe_from_dict
    from advmem.training import train

    run, _ = train(recipe_from_dict(one_epoch()), run_root=tmp_path, quiet=True)
    assert not run.user_code_path.exists()
    assert "user_code" not in json.loads((run.checkpoints / "best.json").read_text())
    text = run.recipe_path.read_text()
    assert "imports:" not in text and "plugins:" not in text
    probe = "import sys, advmem, advmem.plugins, advmem.recipe; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, PYTHONPATH=str(SRC)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_closed_pipe_exits_quietly(tmp_path):
    """`advmem recipes | head` used to end in a BrokenPipeError traceback. The read end is closed
    before advmem writes, so every write fails: deterministic, unlike a real `| head`."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "advmem", "recipes"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(SRC)), cwd=tmp_path)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
