"""User code a recipe names: "module:attr" names, `imports:`, installed plugins, and their record.

Loading user code is always the recipe's explicit choice, never a side effect of installing
something: a recipe names an object (`model: {name: "mypkg.nets:MyNet"}`, likewise a method class
or a dataset reader), lists modules to import (`imports: [mypkg.advmem_plugins]`, which register
models, methods or datasets with the usual `@MODELS.register("name")`), or lists installed
plugins by name (`plugins: [name]`: entry points of the group `advmem.plugins`). An installed
plugin that no recipe names is never imported; `advmem info` lists them without importing them.

A run records what it imported (`run_record`: the modules, each with its distribution and
version when installed and its file with a sha256), in the run directory (user_code.json) and in
every checkpoint's sidecar, so eval and export import the same modules again (`load_recorded`).
An object passed from Python (`advmem.train(recipe, model=obj)`) that no name can rebuild is
recorded as such (`OBJECT_PREFIX`).

Torch-free: reading a recipe imports this module; only user code imports torch.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata as metadata
import inspect
import re
import sys
import types
from pathlib import Path
from typing import Any

from advmem.errors import UserError

ENTRY_POINT_GROUP = "advmem.plugins"
OBJECT_PREFIX = "<python object "  # model.name of an object given to advmem.train(model=...)
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_OBJECT_PATH = re.compile(rf"({_DOTTED}):({_DOTTED})")
_MODULE = re.compile(_DOTTED)
_loaded_plugins: dict[str, str] = {}  # entry-point name -> its module, loaded once per process
# The registries that take user code (advmem.registry.Registry made with `adapt` appends itself),
# kept here so that this module, below the registry, needs nothing from it.
USER_REGISTRIES: list[Any] = []


def is_object_path(name: Any) -> bool:
    """Whether a registry name is a "module:attr" reference to user code (registered names have no ':')."""
    return isinstance(name, str) and ":" in name


def is_python_object(name: Any) -> bool:
    """Whether a model.name records an object given from Python (`object_name`)."""
    return isinstance(name, str) and name.startswith(OBJECT_PREFIX)


def object_name(obj: Any) -> str:
    """The model.name recorded for an object given from Python that no "module:attr" rebuilds: the
    class of an instance, or the class or function itself."""
    cls = obj if isinstance(obj, type) or inspect.isroutine(obj) else type(obj)
    return f"{OBJECT_PREFIX}{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}>"


def importable_name(obj: Any) -> str | None:
    """"module:qualname" when importing it gives back `obj` itself (a class or function defined at the
    top level of an importable module, not __main__ or a notebook), else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__" or "<" in qualname:
        return None
    spec = f"{module}:{qualname}"
    try:
        return spec if import_object(spec, "object") is obj else None
    except UserError:
        return None


def _why_not_importable(module: str, err: BaseException) -> str:
    """The reason an import failed and the fix, in one clause."""
    top = module.split(".")[0]
    if isinstance(err, ModuleNotFoundError) and err.name and (module == err.name or module.startswith(err.name + ".")):
        return (f"module {err.name} not found; install the package that provides it, or put the folder that holds "
                f"{top}/ on PYTHONPATH (PYTHONPATH=DIR advmem ...)")
    if isinstance(err, ModuleNotFoundError) and err.name:
        return f"importing {module} failed: it imports {err.name}, which is not installed; install it"
    first = (str(err).splitlines() or [""])[0][:200]
    return f"importing {module} failed: {type(err).__name__}: {first} (--debug shows the traceback)"


def import_user_module(name: str, what: str) -> types.ModuleType:
    """Import module `name` of user code; a failure is a one-line UserError that starts with `what`."""
    if not isinstance(name, str) or not _MODULE.fullmatch(name):
        raise UserError(f"{what}: {name!r} is not a module name (dotted, e.g. mypkg.advmem_plugins)")
    try:
        return importlib.import_module(name)
    except UserError:
        raise
    except Exception as err:  # any error of user code at import time: say which module, keep the chain for --debug
        raise UserError(f"{what}: {_why_not_importable(name, err)}") from err


def import_object(spec: str, kind: str) -> Any:
    """The object a "module:attr" name (`attr` may be dotted: Outer.build) refers to."""
    match = _OBJECT_PATH.fullmatch(spec)
    if match is None:
        raise UserError(f"{kind} {spec!r}: a name with ':' refers to your code and must be module:attr, "
                        f"e.g. mypkg.nets:MyNet")
    module_name, attr = match.groups()
    obj: Any = import_user_module(module_name, spec)
    for depth, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = module_name if depth == 0 else f"{module_name}:{'.'.join(attr.split('.')[:depth])}"
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; it defines: {', '.join(names[:12]) or 'nothing public'}"
            raise UserError(f"{spec}: {where} has no attribute {part}{hint}")
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# Installed plugins (entry points) and the recipe's imports


def installed_plugins() -> dict[str, metadata.EntryPoint]:
    """The entry points of the group advmem.plugins, by name (listing them imports nothing)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin(name: str) -> str:
    """Load the installed plugin `name` (once per process) and return its module's name.

    The entry point names a module (`fake = mypkg.advmem_plugins`: importing it registers) or a
    function (`fake = mypkg:register`: called once with no arguments)."""
    if name in _loaded_plugins:
        return _loaded_plugins[name]
    found = installed_plugins()
    if name not in found:
        choices = ", ".join(sorted(found)) or f"none is installed (a plugin is an entry point of the group {ENTRY_POINT_GROUP})"
        raise UserError(f"plugins: {name!r} is not an installed advmem plugin; installed: {choices}")
    ep = found[name]
    what = f"plugins: {name} ({ep.value})"
    import_user_module(ep.module, what)
    obj = import_object(f"{ep.module}:{ep.attr}", "plugin") if ep.attr else None
    if obj is not None:
        if not callable(obj):
            raise UserError(f"{what}: the entry point must name a module or a function, not a {type(obj).__name__}")
        try:
            obj()
        except UserError:
            raise
        except Exception as err:  # the plugin's own registration failed
            raise UserError(f"{what}: calling {ep.value}() failed: {type(err).__name__}: {err}") from err
    _loaded_plugins[name] = ep.module
    return ep.module


def load_user_registries(after: str) -> None:
    """Load the built-in entries of every registry that takes user code (after user code registered
    into them), so a user name that clashes with a built-in one is a UserError naming `after`."""
    for registry in list(USER_REGISTRIES):
        try:
            registry.names()
        except ValueError as err:
            if "registered twice" not in str(err):
                raise
            raise UserError(f"{after}: {err}: a built-in or another plugin has that name; register yours under "
                            "another name") from None


def load_user_code(imports: list[str], plugins: list[str]) -> None:
    """Load a recipe's plugins, then its imports (a UserError names the one that fails). The registries
    that take user entries are then loaded, so a user name that clashes with a built-in one is
    reported here rather than at a later lookup."""
    if not (imports or plugins):
        return
    for name in plugins:
        load_plugin(name)
    for name in imports:
        import_user_module(name, f"imports: {name}")
    load_user_registries(f"imports/plugins ({', '.join([*plugins, *imports])})")


# ---------------------------------------------------------------------------------------------
# What a run records, and importing it again


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def module_record(name: str, distributions: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Module `name` (imported): its distribution and version when an installed one provides its
    top-level package, and its file with a sha256 (also for an installed one: editable installs
    change without a new version)."""
    record: dict[str, Any] = {"module": name}
    dists = (distributions if distributions is not None else metadata.packages_distributions()).get(name.split(".")[0])
    if dists:
        record["distribution"] = dists[0]
        try:
            record["version"] = metadata.version(dists[0])
        except metadata.PackageNotFoundError:
            pass
    file = getattr(sys.modules.get(name), "__file__", None)
    if file and Path(file).is_file():
        record["file"] = str(Path(file).resolve())
        record["sha256"] = _sha256(Path(file))
    return record


def defining_module(obj: Any) -> str | None:
    """The module that defines a registry entry when it is user code (not advmem's), else None."""
    module = getattr(obj, "user_module", None) or getattr(obj, "__module__", None)
    if not isinstance(module, str) or module == "advmem" or module.startswith("advmem."):
        return None
    return module


_records: dict[tuple, dict[str, Any] | None] = {}


def run_record(imports: list[str], plugins: list[str], entries: list[Any], *,
               python_object: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What a run imported: its `imports`, its `plugins` (with the entry point and its distribution),
    and the modules of user code that define `entries` (the run's model builder, method and dataset
    reader); None when it used none. Computed once per process for the same inputs: the modules are
    the ones imported then (Python does not re-import an edited file)."""
    modules = list(dict.fromkeys([*imports, *(m for m in map(defining_module, entries) if m)]))
    if not (modules or plugins or python_object):
        return None
    key = (tuple(imports), tuple(plugins), tuple(modules), repr(python_object))
    if key not in _records:
        distributions = metadata.packages_distributions()
        # the other modules of a package that no installed distribution versions (local code: the
        # module that defines the network, imported by the one that registers it)
        local = {m.split(".")[0] for m in modules} - set(distributions)
        modules += sorted(m for m in list(sys.modules) if m.split(".")[0] in local and m not in modules)
        found = installed_plugins()
        plugin_records = []
        for name in plugins:
            ep = found.get(name)
            entry: dict[str, Any] = {"plugin": name, "entry_point": ep.value if ep else None}
            if ep is not None and ep.dist is not None:
                entry.update(distribution=ep.dist.name, version=ep.dist.version)
            plugin_records.append(entry)
            if ep is not None and ep.module not in modules:
                modules.append(ep.module)
        record: dict[str, Any] = {"imports": list(imports), "plugins": plugin_records,
                                  "modules": [module_record(m, distributions) for m in modules if m in sys.modules]}
        if python_object is not None:
            record["python_object"] = python_object
        _records[key] = record
    return _records[key]


_noted: set[tuple[str, str]] = set()


def load_recorded(record: Any, source: str) -> None:
    """Import what a checkpoint's `user_code` record names again (its imports and plugins; a
    "module:attr" name imports itself when it is looked up), so the model, method and dataset it
    describes can be rebuilt. A module that cannot be imported is a UserError naming it and the
    fix; one whose file or version differs from the record gets a note on stderr (the weights may
    not fit the code as it is now)."""
    if not isinstance(record, dict):
        return
    plugins = [p.get("plugin") for p in record.get("plugins") or [] if isinstance(p, dict)]
    imports = [m for m in record.get("imports") or [] if isinstance(m, str)]
    try:
        load_user_code(imports, [p for p in plugins if isinstance(p, str)])
    except UserError as err:
        raise UserError(f"{source} records user code that cannot be imported here: {err}") from err.__cause__
    for saved in record.get("modules") or []:
        if not isinstance(saved, dict) or saved.get("module") not in sys.modules:
            continue
        now = module_record(saved["module"], {} if "distribution" not in saved else None)
        for key in ("version", "sha256"):
            if saved.get(key) and now.get(key) and saved[key] != now[key] and (saved["module"], key) not in _noted:
                _noted.add((saved["module"], key))
                print(f"advmem: note: {saved['module']} has changed since {source} was written ({key} "
                      f"{str(saved[key])[:12]} then, {str(now[key])[:12]} now); the model rebuilt from it may differ",
                      file=sys.stderr)
