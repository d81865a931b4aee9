"""Recipes: the typed, validated description of a run.

A recipe is data; the only strings interpreted are budgets written as fractions ("8/255"),
which are recorded exactly as written so results say which eps was really used, and the user
code it names explicitly (`imports:`, `plugins:`, a "module:attr" model, method or dataset;
advmem.plugins), imported when the recipe is validated so the names it registers are known.
Every section forbids unknown keys, so a typo is an error naming the valid keys, not a silently
ignored setting.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import Annotated

from advmem.data.config import DataConfig
from advmem.errors import UserError
from advmem.recipe.method import AttackConfig, MethodConfig, method_config, method_config_class
from advmem.recipe.track import TrackConfig
from advmem.strict import Budget, Section, budget_value
from advmem.io import read_input_text
from advmem.plugins import load_user_code

class ScheduleConfig(Section):
    """Learning-rate schedule, applied per epoch. Epochs are 1-indexed: with milestones [100]
    epochs 1..100 use lr and epoch 101 on uses lr*gamma, as in the paper's code. A milestone
    may also be a fraction of optim.epochs (a float in (0, 1), e.g. [0.5, 0.75]), resolved when
    the recipe is validated (`resolve_epoch_fractions`), so the run records whole epochs."""

    name: Literal["multistep", "step", "cosine", "constant"] = "multistep"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    step_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "ScheduleConfig":
        if self.name == "step" and self.step_size is None:
            raise ValueError("optim.schedule.step_size is required with schedule name 'step'")
        m = self.milestones
        if any(b <= a for a, b in zip(m, m[1:])) or any(x < 1 for x in m):
            raise ValueError(f"optim.schedule.milestones must be strictly increasing positive epochs, got {m}")
        return self


class EMAConfig(Section):
    """Weight averaging: an exponential moving average of the weights (and BatchNorm buffers),
    updated after every optimizer step from `start_epoch` on, evaluated and checkpointed
    alongside the raw model (`checkpoints/ema_best.*`, `ema_last.*`, metrics `ema_*`)."""

    decay: float = Field(0.999, gt=0, lt=1)
    start_epoch: int = Field(1, ge=1)


MAX_EPOCHS = 100_000  # optim.epochs above this is refused: a typo, not a plan


class OptimConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    schedule: ScheduleConfig = ScheduleConfig()
    ema: EMAConfig | None = None

    @field_validator("epochs", mode="before")
    @classmethod
    def _cap_epochs(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_EPOCHS:
            raise ValueError(f"at most {MAX_EPOCHS} epochs are allowed (such a run would never end); lower it")
        return value

    @model_validator(mode="after")
    def _check(self) -> "OptimConfig":
        if self.nesterov and self.momentum == 0:
            raise ValueError("optim.nesterov needs optim.momentum > 0")
        late = [m for m in self.schedule.milestones if m >= self.epochs]
        if late:
            raise ValueError(
                f"optim.schedule.milestones {late} are not before the last epoch {self.epochs}; "
                "lower them or raise optim.epochs"
            )
        if self.ema is not None and self.ema.start_epoch > self.epochs:
            raise ValueError(f"optim.ema.start_epoch {self.ema.start_epoch} is after the last epoch {self.epochs}")
        return self


class EvalAttackConfig(Section):
    """Evaluation attack during training; unset budgets default to the training attack's."""

    eps: Budget | None = None
    step_size: Budget | None = None
    steps: int = Field(10, ge=1)
    restarts: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check_budgets(self) -> "EvalAttackConfig":
        if self.eps is not None and budget_value(self.eps) < 0:
            raise ValueError(f"eval.attack.eps must be >= 0, got {self.eps}")
        if self.step_size is not None and budget_value(self.step_size) <= 0:
            raise ValueError(f"eval.attack.step_size must be > 0, got {self.step_size}")
        return self


class EvalConfig(Section):
    every: int = Field(1, ge=1)
    train_subset: int = Field(1000, ge=0)
    batch_size: int = Field(256, ge=1)
    attack: EvalAttackConfig = EvalAttackConfig()
    # With data.test_size set, the last epoch also evaluates the full test set (test_full_* keys).
    final_full: bool = True


class LogConfig(Section):
    """Extra logging sinks; metrics.jsonl/.csv in the run directory stay the source of truth."""

    tensorboard: bool = False  # scalars per epoch into runs/<name>/tb/ (needs the tensorboard package)
    # epochs whose weights are also kept as checkpoints/epoch-N (the gradient probes along training
    # read them: `advmem analyze grad-same-weights RUN --checkpoint init,epoch-1,epoch-5,last`)
    checkpoint_epochs: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)


class ModelConfig(Section):
    name: str = "small_cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # "dataset": the model's first layer standardizes with the training set's per-channel mean
    # and std; "none": the model takes raw [0,1] pixels, as the authors' ResNet-18 and WRN do
    # (the layer stays, with mean 0 and std 1, which is exactly the identity in floating point).
    normalize: Literal["dataset", "none"] = "dataset"


class PerfConfig(Section):
    """Speed settings; none changes what is computed beyond floating-point rounding.

    "auto" resolves per device: channels_last on both, bf16 autocast on CUDA (fp16 where the GPU has no
    native bf16), fp32 on CPU.
    Evaluation always runs in fp32. fp16 scales the attack's input gradient by
    `fp16_attack_scale` (so sign steps do not underflow to zero) and the weight gradients with
    torch.amp.GradScaler. `cuda_graphs` compiles with mode="reduce-overhead" (CUDA only).
    `fold_bn` lets eval-mode training attacks run on a view of the model with each conv -> BN
    pair folded into one convolution, `fast_pool` lets that view's max-pools use the NHWC kernel
    on CPU (bit for bit the same result; advmem.attacks.attack_view).
    """

    channels_last: Literal["auto", True, False] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    cuda_graphs: bool = False
    fp16_attack_scale: float = Field(1024.0, gt=0)
    fold_bn: Literal["auto", True, False] = "auto"  # eval-mode attacks fold conv->BN pairs (auto: unless compiled)
    fast_pool: Literal["auto", True, False] = "auto"  # eval-mode attacks max-pool in NHWC on CPU (auto: unless compiled)


class ReliabilityConfig(Section):
    """What the trainer does when a step's loss or gradient is not finite (docs/reliability.md)."""

    on_nonfinite: Literal["stop", "skip_batch"] = "stop"
    # With `stop`, the first non-finite step is recorded on the device (no host sync inside the
    # step) and read every `check_every` steps and at the end of the epoch: 0 = end of epoch only.
    # `skip_batch` and DDP must decide before the optimizer step, so they sync every step.
    check_every: int = Field(0, ge=0)


class DistributedConfig(Section):
    """Used only under torchrun (WORLD_SIZE > 1); see docs/distributed.md."""

    sync_bn: bool = False
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: int = Field(1800, ge=10)


class LauncherConfig(Section):
    """Cluster resources for `advmem sweep --launcher slurm`; not used by `advmem train`."""

    partition: str | None = None
    gpus_per_node: int = Field(1, ge=0)
    nodes: int = Field(1, ge=1)
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: int | None = Field(None, ge=1)
    time_min: int = Field(1440, ge=1)
    account: str | None = None
    qos: str | None = None


# Keys that do not change what a run computes: excluded from Recipe.hash() and settable with --resume.
RESUME_SETTABLE = ("reliability.on_nonfinite", "distributed.backend", "distributed.timeout_s")


def _is_fraction(value: Any) -> bool:
    return isinstance(value, float) and 0 < value < 1


def _not_an_epoch(key: str, value: Any) -> str:
    return (f"{key}: {value!r} is neither an epoch number (an integer >= 1) nor a fraction of optim.epochs "
            "(a float between 0 and 1, e.g. 0.5)")


def resolve_epoch_fractions(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe mapping with epoch fractions resolved against optim.epochs (a copy if any).

    A fraction f (a float in (0, 1)) of E = optim.epochs becomes round(f * E). For
    optim.schedule.milestones a resolved fraction is at least 1 and at least one epoch after the
    milestone before it; one that lands on or after the last epoch is dropped (a milestone there
    changes no epoch's learning rate), so a short run of a recipe written in fractions keeps every
    decay that fits. For a method's EPOCH_FIELDS (TE's start_epoch, end_epoch) it is clamped to
    [1, E]. Integers are left exactly as written (so are the hash and the run of a recipe written
    in integers); the checks of strictly increasing milestones before the last epoch and TE's
    start < end <= epochs then apply to the resolved values. Called before validation."""
    optim = data.get("optim")
    optim = optim if isinstance(optim, dict) else {}
    epochs = optim.get("epochs", OptimConfig.model_fields["epochs"].default)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        return data  # optim.epochs itself is reported by its own validator
    schedule = optim.get("schedule")
    milestones = schedule.get("milestones") if isinstance(schedule, dict) else None
    method = data.get("method")
    method_fields: tuple[str, ...] = ()
    if isinstance(method, dict) and isinstance(method.get("name"), str):
        try:
            method_fields = method_config_class(method["name"]).EPOCH_FIELDS
        except (UserError, ValueError):
            method_fields = ()  # the unknown method is reported by the method validator
    has_milestones = isinstance(milestones, list) and any(isinstance(m, float) for m in milestones)
    has_method = any(isinstance(method.get(f), float) for f in method_fields) if method_fields else False
    if not (has_milestones or has_method):
        return data
    data = dict(data)
    if has_milestones:
        resolved: list[Any] = []
        for m in milestones:
            if _is_fraction(m):
                at = max(1, round(m * epochs), (resolved[-1] + 1) if resolved and isinstance(resolved[-1], int) else 1)
                if at < epochs:
                    resolved.append(at)
            elif isinstance(m, float) and not m.is_integer():
                raise ValueError(_not_an_epoch("optim.schedule.milestones", m))
            else:
                resolved.append(m)
        if any(not (isinstance(a, int) and isinstance(b, int) and b > a) for a, b in zip(resolved, resolved[1:])):
            raise ValueError(f"optim.schedule.milestones {milestones} resolve to {resolved} with optim.epochs={epochs}; "
                             "they must be strictly increasing (fractions of optim.epochs and epochs mixed?)")
        data["optim"] = {**optim, "schedule": {**schedule, "milestones": resolved}}
    if has_method:
        method = dict(method)
        for f in method_fields:
            v = method.get(f)
            if _is_fraction(v):
                method[f] = min(epochs, max(1, round(v * epochs)))
            elif isinstance(v, float) and not v.is_integer():
                raise ValueError(_not_an_epoch(f"method.{f}", v))
        data["method"] = method
    return data


def _user_code(data: dict[str, Any]) -> None:
    """Import the recipe's `plugins` (installed entry points, by name) and `imports` (modules), before
    anything else is validated: they register the models, methods and datasets the recipe names."""
    lists = {}
    for key, example in (("plugins", "plugins: [myplugin]"), ("imports", "imports: [mypkg.advmem_plugins]")):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of names, e.g. {example}; got {value!r}")
        lists[key] = value
    if lists["plugins"] or lists["imports"]:
        try:
            load_user_code(lists["imports"], lists["plugins"])
        except UserError as err:
            raise ValueError(str(err)) from err.__cause__


class Recipe(Section):
    name: str = "run"
    description: str = ""
    # User code, imported before the rest is validated (advmem.plugins): modules whose import registers
    # models, methods or datasets, and installed plugins (entry points of the group advmem.plugins) by name.
    imports: list[str] = Field(default_factory=list)
    plugins: list[str] = Field(default_factory=list)
    seed: int = Field(0, ge=0, lt=2**32)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    output_root: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: method_config({"name": "pgd_at"}))
    attack: AttackConfig = AttackConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    track: TrackConfig = TrackConfig()
    reliability: ReliabilityConfig = ReliabilityConfig()
    distributed: DistributedConfig = DistributedConfig()
    launcher: LauncherConfig = LauncherConfig()
    perf: PerfConfig = PerfConfig()

    @model_validator(mode="before")
    @classmethod
    def _resolve_fractions(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        _user_code(data)  # first: a method it registers may have epoch fields to resolve
        return resolve_epoch_fractions(data)

    @field_validator("method", mode="before")
    @classmethod
    def _resolve_method(cls, value: Any) -> MethodConfig:
        return method_config(value)

    @model_validator(mode="after")
    def _check_method_against_recipe(self) -> "Recipe":
        self.method.check_against(self)
        late = [e for e in self.log.checkpoint_epochs if e > self.optim.epochs]
        if late:
            raise ValueError(f"log.checkpoint_epochs {late} are after the last epoch {self.optim.epochs}; "
                             "drop them or raise optim.epochs")
        return self

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"name '{value}' must be letters, digits, '.', '_' or '-' (it names the run directory)")
        return value

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data; `imports` and `plugins` only when set, so a recipe of built-in
        names reads (and its recipe.yaml is) as before they existed."""
        data = self.model_dump(mode="json")
        for key in ("imports", "plugins"):
            if not data[key]:
                del data[key]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self, *, keep_empty: tuple[str, ...] = (), legacy_method_names: bool = False) -> str:
        """Hash of everything that changes what is computed (not the name or description).

        Keys left at their defaults are excluded, so a later advmem version that adds a section
        with behaviour-preserving defaults does not orphan existing runs' resume states. So are
        the RESUME_SETTABLE keys, and a section they leave empty, so the hash is the same whether
        or not they are given. `keep_empty` names sections to hash as `{}` when so left, as advmem
        did before that fix for a recipe that set them: only to recognise the resume states of
        run directories written then (`engine.resume.recipe_hash_matches`).

        The method section always carries its `name` (and a composite's base its own): each method
        config's name is its own default, so without it TE with the default settings and TRADES
        with beta 6 hashed alike. `legacy_method_names` computes the hash as advmem did before
        (names left out), again only to recognise run directories written then."""
        body = self.model_dump(mode="json", exclude_defaults=True)
        if not legacy_method_names:
            body["method"] = _method_body(self.method)
        for key in ("name", "description", "output_root", "launcher"):
            body.pop(key, None)
        for dotted in RESUME_SETTABLE:
            section, key = dotted.split(".")
            body.get(section, {}).pop(key, None)
            if section in body and not body[section]:
                del body[section]
        for section in keep_empty:
            body.setdefault(section, {})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _method_body(cfg: "MethodConfig") -> dict[str, Any]:
    """A method config's non-default values with its name, and a nested base method's likewise."""
    body = cfg.model_dump(mode="json", exclude_defaults=True)
    body["name"] = cfg.name
    for field in type(cfg).model_fields:
        value = getattr(cfg, field)
        if isinstance(value, MethodConfig):
            body[field] = _method_body(value)
    return body


# ---------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def shipped_recipes_dir() -> Path:
    """Recipes shipped with advmem: inside the package when installed, else the checkout's."""
    here = Path(__file__).resolve().parents[1]  # the advmem package
    for candidate in (here / "recipes", here.parents[1] / "recipes"):
        if candidate.is_dir():
            return candidate
    return here.parents[1] / "recipes"


def shipped_recipes() -> dict[str, Path]:
    root = shipped_recipes_dir()
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.rglob("*.yaml"))}


def resolve_recipe_path(spec: str) -> Path:
    path = Path(spec)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    key = spec[:-5] if spec.endswith(".yaml") else spec
    key = key[len("recipes/"):] if key.startswith("recipes/") else key
    if key in shipped:
        return shipped[key]
    raise UserError(
        f"recipe '{spec}' not found: not a file, and not a shipped recipe; "
        f"run 'advmem recipes' to list them ({', '.join(list(shipped)[:6])}, ...)"
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text or text.startswith("=") or text.split("=", 1)[0].strip() == "":
        raise UserError(f"malformed --set '{text}': expected key.path=value, e.g. --set optim.lr=0.05")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if any(not part for part in path):
        raise UserError(f"malformed --set '{text}': empty key part; expected key.path=value, e.g. --set optim.lr=0.05")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {text}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def _section_class_at(loc: tuple[Any, ...], data: dict[str, Any]) -> type[BaseModel] | None:
    """The pydantic class that owns the keys at `loc` (used to list valid keys)."""
    cls: type[BaseModel] = Recipe
    node: Any = data
    for part in loc:
        if cls is Recipe and part == "method":
            name = node.get("method", {}).get("name") if isinstance(node.get("method"), dict) else None
            try:
                cls = method_config_class(name) if name else MethodConfig
            except (UserError, ValueError):
                return None
            node = node.get("method", {})
            continue
        field = cls.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann] + list(getattr(ann, "__args__", ()))
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return None
        cls = sub
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return cls


def _blame(source: str, where: str, msg: str, overrides: list[str]) -> str:
    """Who an error is about: `--set K=V` when it is that value, `FILE with --set K=V` when a
    --set changed the section a check failed in (or a key the message names), else the file."""
    keys = [(text, text.split("=", 1)[0].strip()) for text in reversed(overrides)]  # the last --set of a key wins
    for text, key in keys:
        if (where and (where == key or where.startswith(key + "."))) or (not where and msg.startswith(key)):
            return f"--set {text}"
    for text, key in keys:
        if (where and key.startswith(where + ".")) or (not where and key in msg):
            return f"{source} with --set {text}"
    return source


def _where(error: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    return loc, ".".join(str(p) for p in loc)


def _unknown_keys_message(unknown: list[dict[str, Any]], data: dict[str, Any], source: str,
                          overrides: list[str]) -> str:
    """Every unknown key at once, each level's valid keys, and difflib's nearest valid key."""
    import difflib

    names, levels, guesses = [], {}, []
    for error in unknown:
        loc, where = _where(error)
        names.append(f"'{where}'")
        parent = _section_class_at(loc[:-1], data)
        level = ".".join(str(p) for p in loc[:-1]) or "the top level"
        valid = sorted(parent.model_fields) if parent else []
        levels.setdefault(level, ", ".join(valid) if valid else "see the docs")
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        if close:
            guesses.append(f"'{'.'.join([*map(str, loc[:-1]), close[0]])}' for {names[-1]}" if len(unknown) > 1
                           else f"'{'.'.join([*map(str, loc[:-1]), close[0]])}'")
    first_loc, first_where = _where(unknown[0])
    source = _blame(source, first_where, "", overrides)
    what = f"unknown key {names[0]}" if len(names) == 1 else f"unknown keys {', '.join(names)}"
    valid_text = "; ".join(f"valid keys at {level}: {valid}" for level, valid in levels.items())
    hint = f"; did you mean {', '.join(guesses)}?" if guesses else ""
    return f"{source}: {what}; {valid_text}{hint}"


def format_validation_error(err: ValidationError, data: dict[str, Any], source: str,
                            overrides: list[str] | None = None) -> str:
    overrides = list(overrides or [])
    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        return _unknown_keys_message(unknown, data, source, overrides)
    first = errors[0]
    loc, where = _where(first)
    msg = first["msg"].removeprefix("Value error, ")
    source = _blame(source, where, msg, overrides)
    if not loc:  # a whole-recipe check, whose message names its keys
        return f"{source}: {msg}"
    if first["type"] == "literal_error":
        return f"{source}: {where}: {msg} (got {first.get('input')!r})"
    got = first.get("input")
    suffix = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{source}: {where}: {msg}{suffix}"


def recipe_from_dict(data: dict[str, Any], source: str = "recipe", overrides: list[str] | None = None) -> Recipe:
    """Validate a recipe mapping; errors name `source`, or the `--set` in `overrides` they are about."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a mapping of sections (data:, model:, method:, ...)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        message = format_validation_error(err, data, source, overrides)
        raise UserError(message.replace("\r", "\\r").replace("\n", "\\n")) from None  # always one line


MAX_DEPTH = 32  # a recipe nests about 4 levels; deeper input is refused before anything recurses over it


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, again: int) -> None:
        self.key, self.first, self.again = key, first, again


class _RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of lists/dicts, counted iteratively (stops past `limit`)."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_recipe_text(text: str, source: str) -> dict[str, Any]:
    """A recipe file's YAML as a mapping, or a one-line UserError: invalid YAML, a duplicate key,
    nesting deeper than MAX_DEPTH, an empty file, or not a mapping."""
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as dup:
        raise UserError(f"{source}: key '{dup.key}' is given twice in the same section (lines {dup.first} and "
                        f"{dup.again}); keep one (YAML would silently use the last)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{source}: not valid YAML{where}; fix the syntax") from None
    except RecursionError:
        raise UserError(f"{source}: nested far too deeply (a recipe nests about 4 levels, at most {MAX_DEPTH}); "
                        "pass the right file") from None
    if data is None or data == {}:
        raise UserError(f"{source}: the recipe is empty; refusing to start the default run. Write the settings "
                        "(data:, model:, method:, optim:), e.g. start from recipes/quickstart.yaml")
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a mapping of sections (data:, model:, method:, ...)")
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise UserError(f"{source}: nested more than {MAX_DEPTH} levels deep (a recipe nests about 4); "
                        "pass the right file")
    return data


def read_recipe_file(path: Path) -> dict[str, Any]:
    """Read and parse a recipe file: at most 1 MB of UTF-8 YAML (advmem.io.read_input_text)."""
    try:
        text = read_input_text(path, "recipe")
    except FileNotFoundError:
        raise UserError(f"{path}: recipe not found; check the path") from None
    return parse_recipe_text(text, str(path))


def load_recipe(spec: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = resolve_recipe_path(str(spec))
    data = read_recipe_file(path)
    data = apply_overrides(data, overrides or [])
    return recipe_from_dict(data, source=str(path), overrides=overrides)


def recipe_warnings(recipe: Recipe) -> list[str]:
    """Settings that are valid but probably not meant, one line each (`advmem train` prints them).

    A multi-step attack whose step size exceeds eps projects every step back to the ball's
    boundary, so its steps do not search inside it (a typo such as 8/255 for 2/255). One step
    larger than eps after a random start is left alone: that is FGSM-RS (step 1.25 eps)."""
    out = []
    a, ev = recipe.attack, recipe.eval.attack
    attacks = [("attack", a.step_size, a.eps, a.steps),
               ("eval.attack", ev.step_size or a.step_size, ev.eps or a.eps, ev.steps)]
    for section, step, eps, steps in attacks:
        if steps > 1 and 0 < budget_value(eps) < budget_value(step):
            out.append(f"{section}: step size {step} exceeds eps {eps}, so each of its {steps} steps lands on the "
                       f"boundary of the eps ball; the usual step is eps/4 (e.g. step_size: 2/255 for eps 8/255)")
    return out
