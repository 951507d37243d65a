"""Domain packs: loading, validation, discovery, scaffolding and installation.

The format is documented in ``docs/packs.md``. Validation collects *every* problem with file,
line and key, so a pack developer fixes them in one pass; loading a pack with any problem raises
``PackError`` listing them.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from assistant import paths
from assistant.errors import PackError
from assistant.red_flags import RedFlag, check_pattern, compile_pattern

SCHEMA_VERSION = 1
ENTRY_POINT_GROUP = "assistant.packs"
_ID_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")

_TOP_KEYS = {
    "schema_version": int, "id": str, "name": str, "version": str, "description": str,
    "persona": str, "disclaimer": str, "notice": str, "safety_rules": list,
    "starter_questions": list, "generation": dict, "extraction": dict, "red_flags": list, "checks": list,
}
# Answer checks a pack opts into (`checks = ["allergens"]`); their code is in assistant/safety.py.
CHECKS = {"allergens": "warn when an answer mentions a food or drug the user said they are allergic to"}
_REQUIRED = ("schema_version", "id", "name", "version", "description", "persona")
_GENERATION_KEYS: dict[str, type | tuple[type, ...]] = {"temperature": (int, float), "top_p": (int, float),
                                                        "max_new_tokens": int}
_EXTRACTION_KEYS: dict[str, type | tuple[type, ...]] = {"hints": list}
_RED_FLAG_KEYS = {"id": str, "patterns": list, "message": str, "mode": str}
_JSONL_KEYS = {
    "train.jsonl": ({"id", "prompt", "answer"}, set()),
    "eval.jsonl": ({"id", "ask", "expect_any"}, {"answer", "source", "expect_all", "forbid"}),
    "safety_cases.jsonl": ({"text", "flag"}, set()),
}


@dataclass
class Problem:
    file: str
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.file + (f" line {self.line}" if self.line else "")
        return f"{where}: " + (f"`{self.key}`: " if self.key else "") + self.message


@dataclass
class Pack:
    id: str
    name: str
    version: str
    description: str
    persona: str
    root: Path
    source: str = "built-in"
    disclaimer: str = ""
    notice: str = ""
    safety_rules: list[str] = field(default_factory=list)
    starter_questions: list[str] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    extraction_hints: list[str] = field(default_factory=list)
    red_flags: list[RedFlag] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # answer checks it opts into (CHECKS)

    def system_prompt(self) -> str:
        text = self.persona.strip()
        if self.safety_rules:
            text += "\nRules:\n" + "\n".join(f"- {r}" for r in self.safety_rules)
        return text

    def adapter_dir(self) -> Path:
        """Where the pack keeps the starting adapter it ships (``adapters.shipped_store``)."""
        return self.root / "adapter"

    def knowledge_files(self) -> list[Path]:
        return sorted((self.root / "knowledge").glob("*.md"))

    def train_examples(self) -> list[dict[str, Any]]:
        return list(_read_jsonl(self.root / "train.jsonl"))

    def eval_probes(self) -> list[dict[str, Any]]:
        return list(_read_jsonl(self.root / "eval.jsonl"))

    def safety_cases(self) -> list[dict[str, Any]]:
        path = self.root / "safety_cases.jsonl"
        return list(_read_jsonl(path)) if path.exists() else []


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _line_of(text: str, key: str, start: int = 0) -> int | None:
    pattern = re.compile(rf"^\s*(\[\[?\s*)?{re.escape(key)}\b")
    for n, line in enumerate(text.splitlines()[start:], start + 1):
        if pattern.match(line):
            return n
    return None


def validate(root: Path, probe: bool = True) -> list[Problem]:
    """Every problem in the pack at ``root`` (empty list: the pack is valid). Never raises.

    ``probe`` times each red-flag pattern on adversarial texts (slower; loading skips it).
    """
    root = Path(root)
    try:
        return _validate(root, probe)
    except (OSError, UnicodeError, ValueError, TypeError, RecursionError) as exc:
        return [Problem(str(root), None, None, f"cannot be read ({type(exc).__name__}: {exc})")]


def _validate(root: Path, probe: bool) -> list[Problem]:
    problems: list[Problem] = []
    manifest = root / "pack.toml"
    if not root.is_dir():
        return [Problem(str(root), None, None, "not a folder: a pack is a folder with pack.toml")]
    if not manifest.is_file():
        return [Problem(str(manifest), None, None, "missing: every pack needs a pack.toml (see docs/packs.md)")]
    text = manifest.read_text(encoding="utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        return [Problem(str(manifest), line, None, f"not valid TOML: {exc}")]
    problems += _check_manifest(manifest, text, data, probe)
    knowledge = root / "knowledge"
    docs = sorted(knowledge.glob("*.md")) if knowledge.is_dir() else []
    if not docs:
        problems.append(Problem(str(knowledge), None, None, "empty: add at least one Markdown document"))
    for doc in docs:
        if not doc.is_file():
            problems.append(Problem(str(doc), None, None, "not a file"))
            continue
        body = doc.read_text(encoding="utf-8", errors="replace")
        if not body.strip():
            problems.append(Problem(str(doc), None, None, "empty document"))
        elif not body.lstrip().startswith("# "):
            problems.append(Problem(str(doc), 1, None, "the first line must be a '# Title'"))
    for name, (required, optional) in _JSONL_KEYS.items():
        path = root / name
        if not path.exists():
            if name != "safety_cases.jsonl":
                problems.append(Problem(str(path), None, None, "missing (an empty file is allowed for a new pack)"))
            continue
        if not path.is_file():
            problems.append(Problem(str(path), None, None, "not a file"))
            continue
        problems += _check_jsonl(path, required, optional, root)
    manifest_ok = not any(p.file == str(manifest) and (p.key or "").startswith(("red_flags", "id")) for p in problems)
    cases = root / "safety_cases.jsonl"
    if cases.is_file() and manifest_ok and not any(p.file == str(cases) for p in problems):
        problems += _check_safety_cases(root, data)
    return problems + _check_adapter(root / "adapter")


def _check_adapter(folder: Path) -> list[Problem]:
    """A shipped starting adapter: ``CURRENT`` names a version with its weights and meta.json."""
    if not folder.exists():
        return []
    current = folder / "CURRENT"
    name = current.read_text().strip() if current.is_file() else ""
    if not name:
        return [Problem(str(current), None, None, "missing or empty: write the version to use (e.g. v0001) into it")]
    missing = [f for f in ("adapter_model.safetensors", "adapter_config.json", "meta.json") if not (folder / name / f).is_file()]
    if missing:
        return [Problem(str(folder / name), None, None, f"{', '.join(missing)} missing: copy the whole version folder "
                        "that `assistant pack train` wrote")]
    return []


def _check_manifest(manifest: Path, text: str, data: dict[str, Any], probe: bool = True) -> list[Problem]:
    f = str(manifest)
    out: list[Problem] = []
    for key, value in data.items():
        if key not in _TOP_KEYS:
            close = [k for k in _TOP_KEYS if _similar(k, key)]
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            out.append(Problem(f, _line_of(text, key), key, f"unknown key{hint}"))
        elif not isinstance(value, _TOP_KEYS[key]):
            out.append(Problem(f, _line_of(text, key), key, f"must be a {_TOP_KEYS[key].__name__}"))
    for name in data.get("checks", []) if isinstance(data.get("checks"), list) else []:
        if name not in CHECKS:
            known = "; ".join(f"{k}: {v}" for k, v in CHECKS.items())
            out.append(Problem(f, _line_of(text, "checks"), "checks", f"unknown check {name!r} (known: {known})"))
    for key in _REQUIRED:
        if key not in data:
            out.append(Problem(f, None, key, "missing required field"))
        elif isinstance(data[key], str) and not data[key].strip():
            out.append(Problem(f, _line_of(text, key), key, "must not be empty"))
    if data.get("schema_version") not in (None, SCHEMA_VERSION) and isinstance(data.get("schema_version"), int):
        out.append(Problem(f, _line_of(text, "schema_version"), "schema_version",
                           f"unsupported version {data['schema_version']} (this program reads {SCHEMA_VERSION})"))
    if isinstance(data.get("id"), str) and not _ID_RE.match(data["id"]):
        out.append(Problem(f, _line_of(text, "id"), "id", "use lowercase letters, digits and '-', starting with a letter"))
    for key in ("safety_rules", "starter_questions"):
        if isinstance(data.get(key), list) and not all(isinstance(v, str) for v in data[key]):
            out.append(Problem(f, _line_of(text, key), key, "must be a list of strings"))
    for table, spec in (("generation", _GENERATION_KEYS), ("extraction", _EXTRACTION_KEYS)):
        for key, value in (data.get(table) or {}).items() if isinstance(data.get(table), dict) else []:
            if key not in spec:
                out.append(Problem(f, _line_of(text, key), f"{table}.{key}", "unknown key"))
            elif not isinstance(value, spec[key]) or isinstance(value, bool):
                out.append(Problem(f, _line_of(text, key), f"{table}.{key}", "wrong type"))
    seen: set[str] = set()
    start = 0
    for i, flag in enumerate(data.get("red_flags") or [] if isinstance(data.get("red_flags"), list) else []):
        line = _line_of(text, "red_flags", start)
        start = line or start
        key0 = f"red_flags[{i}]"
        if not isinstance(flag, dict):
            out.append(Problem(f, line, key0, "must be a table ([[red_flags]])"))
            continue
        for key in flag:
            if key not in _RED_FLAG_KEYS:
                out.append(Problem(f, _line_of(text, key, start - 1 if start else 0), f"{key0}.{key}", "unknown key"))
        for key in ("id", "patterns", "message"):
            if key not in flag:
                out.append(Problem(f, line, f"{key0}.{key}", "missing required field"))
        fid = flag.get("id")
        if isinstance(fid, str):
            if fid in seen:
                out.append(Problem(f, line, f"{key0}.id", f"duplicate red flag id {fid!r}"))
            seen.add(fid)
        for key, typ in _RED_FLAG_KEYS.items():
            if key in flag and not isinstance(flag[key], typ):
                out.append(Problem(f, line, f"{key0}.{key}", f"must be a {typ.__name__}"))
        if isinstance(flag.get("message"), str) and not flag["message"].strip():
            out.append(Problem(f, line, f"{key0}.message", "must not be empty"))
        if flag.get("mode", "replace") not in ("replace", "prepend"):
            out.append(Problem(f, line, f"{key0}.mode", "must be 'replace' or 'prepend'"))
        patterns = flag.get("patterns")
        if isinstance(patterns, list) and not patterns:
            out.append(Problem(f, line, f"{key0}.patterns", "must list at least one pattern"))
        for pattern in patterns if isinstance(patterns, list) else []:
            why = check_pattern(pattern, probe)
            if why:
                out.append(Problem(f, line, f"{key0}.patterns", f"{_short(pattern)} {why}"))
    out += _check_values(f, text, data)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_GEN_LIMITS = {"temperature": (0.0, 5.0), "top_p": (1e-9, 1.0), "max_new_tokens": (1, 8192)}


def _check_values(f: str, text: str, data: dict[str, Any]) -> list[Problem]:
    """Values of the right type but out of range, or empty where text is needed."""
    out: list[Problem] = []
    gen: dict[str, Any] = data["generation"] if isinstance(data.get("generation"), dict) else {}
    for key, (low, high) in _GEN_LIMITS.items():
        value = gen.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (low <= value <= high):
            shown = "greater than 0 and at most 1" if key == "top_p" else f"between {low:g} and {high:g}"
            out.append(Problem(f, _line_of(text, key), f"generation.{key}", f"{value!r} is out of range: must be {shown}"))
    hints = (data.get("extraction") or {}).get("hints") if isinstance(data.get("extraction"), dict) else None
    if isinstance(hints, list) and not all(isinstance(h, str) for h in hints):
        out.append(Problem(f, _line_of(text, "hints"), "extraction.hints", "must be a list of strings"))
    return out


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.75


def _check_jsonl(path: Path, required: set[str], optional: set[str], root: Path) -> list[Problem]:
    out: list[Problem] = []
    ids: dict[str, int] = {}
    f = str(path)
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(Problem(f, n, None, f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(obj, dict):
            out.append(Problem(f, n, None, "each line must be a JSON object"))
            continue
        for key in obj:
            if key not in required | optional:
                out.append(Problem(f, n, key, "unknown key"))
        for key in sorted(required):
            if key not in obj:
                out.append(Problem(f, n, key, "missing required field"))
            elif key in ("prompt", "answer", "ask", "text", "id") and (not isinstance(obj[key], str) or not obj[key].strip()):
                out.append(Problem(f, n, key, "must be a non-empty string"))
        for key in ("expect_any", "expect_all", "forbid"):
            value = obj.get(key)
            if key in obj and (not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)
                               or (key == "expect_any" and not value)):
                out.append(Problem(f, n, key, "must be a non-empty list of strings" if key == "expect_any"
                                   else "must be a list of strings"))
        for key in ("answer", "source"):
            if key in obj and not isinstance(obj[key], str):
                out.append(Problem(f, n, key, "must be a string"))
        if "flag" in obj and not (obj["flag"] is None or isinstance(obj["flag"], str)):
            out.append(Problem(f, n, "flag", "must be a red flag id (a string), or \"\" for none"))
        if isinstance(obj.get("id"), str):
            if obj["id"] in ids:
                out.append(Problem(f, n, "id", f"duplicate id {obj['id']!r} (first on line {ids[obj['id']]})"))
            else:
                ids[obj["id"]] = n
        source = obj.get("source")
        if isinstance(source, str) and not (root / "knowledge" / source).is_file():
            out.append(Problem(f, n, "source", f"no knowledge file {source!r}"))
    return out


def _check_safety_cases(root: Path, data: dict[str, Any]) -> list[Problem]:
    flags = _red_flags(data)
    out: list[Problem] = []
    path = root / "safety_cases.jsonl"
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        case = json.loads(line)
        fired = {fl.id for fl in flags if fl.matches(case["text"])}
        want = {case["flag"]} if case["flag"] else set()
        if fired != want:
            out.append(Problem(str(path), n, "flag", f"expected {sorted(want) or 'no flag'}, the patterns give {sorted(fired) or 'no flag'}"))
    return out


def _red_flags(data: dict[str, Any]) -> list[RedFlag]:
    return [
        RedFlag(
            id=flag["id"],
            patterns=[compile_pattern(p) for p in flag.get("patterns", [])],
            message=flag["message"].strip(),
            mode=flag.get("mode", "replace"),
        )
        for flag in data.get("red_flags", [])
    ]


def load(root: Path, source: str = "built-in") -> Pack:
    """Load a valid pack, or raise ``PackError`` listing every problem."""
    root = Path(root)
    problems = validate(root, probe=source == "user-install")
    if problems:
        listing = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PackError(f"pack at {root} is invalid (run `assistant pack validate {root}`):\n  {listing}{more}")
    data = tomllib.loads((root / "pack.toml").read_text(encoding="utf-8"))
    return Pack(
        id=data["id"], name=data["name"], version=data["version"], description=data["description"],
        persona=data["persona"], root=root, source=source,
        disclaimer=data.get("disclaimer", ""), notice=data.get("notice", ""),
        safety_rules=list(data.get("safety_rules", [])), starter_questions=list(data.get("starter_questions", [])),
        generation=dict(data.get("generation", {})), extraction_hints=list(data.get("extraction", {}).get("hints", [])),
        red_flags=_red_flags(data), checks=list(data.get("checks", [])),
    )


@dataclass
class Catalog:
    packs: dict[str, Pack]
    errors: list[str]

    def get(self, pack_id: str) -> Pack:
        if pack_id in self.packs:
            return self.packs[pack_id]
        broken = [e for e in self.errors if f"/{pack_id}" in e or f"'{pack_id}'" in e]
        detail = f" It failed to load:\n{broken[0]}" if broken else ""
        raise PackError(
            f"no pack named {pack_id!r}. Available: {', '.join(sorted(self.packs)) or 'none'}. "
            f"See `assistant pack list`.{detail}"
        )


def _candidates() -> Iterator[tuple[Path, str]]:
    builtin = paths.repo_data_dir() / "packs"
    for folder in sorted(builtin.iterdir()) if builtin.is_dir() else []:
        if folder.is_dir():
            yield folder, "built-in"
    user = paths.user_packs_dir()
    try:
        folders = sorted(user.iterdir()) if user.is_dir() else []
    except OSError:
        folders = []
    for folder in folders:
        if folder.is_dir() and not folder.name.startswith("."):
            yield folder, "user"
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            yield Path(ep.load()()), f"pip:{ep.value}"
        except Exception as exc:  # a broken plug-in must not break the others
            yield Path(f"<entry point {ep.name}: {exc}>"), f"pip:{ep.value}"


def discover() -> Catalog:
    """All packs that load; broken ones are reported in ``errors`` and skipped."""
    packs: dict[str, Pack] = {}
    errors: list[str] = []
    for root, source in _candidates():
        try:
            pack = load(root, source)
        except PackError as exc:
            errors.append(f"[{source}] {exc}")
            continue
        except Exception as exc:  # one broken pack must not take the others down
            errors.append(f"[{source}] pack at {root} cannot be loaded ({type(exc).__name__}: {exc}); skipped")
            continue
        if pack.id in packs:
            errors.append(f"[{source}] {root}: pack id {pack.id!r} is already provided by {packs[pack.id].root}; skipped")
            continue
        packs[pack.id] = pack
    return Catalog(packs, errors)


def scaffold(name: str, dest: Path) -> Path:
    """Create a valid starter pack called ``name`` under ``dest``."""
    if not _ID_RE.match(name):
        raise PackError(f"invalid pack name {name!r}: use lowercase letters, digits and '-', starting with a letter")
    root = Path(dest) / name
    if root.exists():
        raise PackError(f"{root} already exists: choose another name or folder")
    (root / "knowledge").mkdir(parents=True)
    title = name.replace("-", " ").title()
    (root / "pack.toml").write_text(
        f'schema_version = {SCHEMA_VERSION}\nid = "{name}"\nname = "{title}"\nversion = "0.1.0"\n'
        f'description = "A helper for {title.lower()} questions."\n'
        f'persona = """You are a careful {title.lower()} helper. Answer briefly and plainly."""\n'
        'disclaimer = ""\nsafety_rules = ["Say when you are not sure."]\n'
        f'starter_questions = ["What can you help me with?"]\n\n[generation]\ntemperature = 0.7\ntop_p = 0.9\n'
        "max_new_tokens = 200\n\n[extraction]\nhints = []\n",
        encoding="utf-8",
    )
    (root / "knowledge" / "overview.md").write_text(
        f"# {title} overview\n\n## What this pack covers\n\nReplace this with real knowledge, one topic per file.\n",
        encoding="utf-8",
    )
    (root / "train.jsonl").write_text(
        json.dumps({"id": f"{name}-train-001", "prompt": "What can you help me with?",
                    "answer": f"I can answer general {title.lower()} questions."}) + "\n", encoding="utf-8")
    (root / "eval.jsonl").write_text(
        json.dumps({"id": f"{name}-eval-001", "ask": "What does this pack cover?", "expect_any": [title.lower()],
                    "answer": f"General {title.lower()} questions.", "source": "overview.md"}) + "\n", encoding="utf-8")
    return root


def install(src: Path) -> Pack:
    """Copy a valid pack folder into the user's packs directory."""
    pack = load(Path(src), "user-install")
    target = paths.inside_home(paths.user_packs_dir() / paths.check_pack_name(pack.id))
    if target.exists():
        raise PackError(f"a user pack {pack.id!r} is already installed at {target}: remove it first")
    if pack.id in {p.name for p in (paths.repo_data_dir() / "packs").iterdir()}:
        raise PackError(f"{pack.id!r} is a built-in pack id: rename your pack (its `id` in pack.toml)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{pack.id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    tmp.rename(target)
    return load(target, "user")
