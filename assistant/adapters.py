"""The adapter store: versioned LoRA adapters per (user, pack), published atomically.

    users/<user>/adapters/<pack>/
      v0001/ v0002/ ...   peft's own files (adapter_config.json, adapter_model.safetensors)
                          plus meta.json (base model, versions, step, data hash, gate result)
      CURRENT             the live version's name, replaced by an atomic rename

A version folder is complete before it gets its final name, and CURRENT only ever names a
complete folder, so a crash at any moment leaves the old or the new state.

When the data directory is encrypted, a user's ``adapter_model.safetensors`` is sealed
(AES-GCM, ``assistant/crypto.py``) under the same name and opened into memory to load:
``read_weights``, ``load_peft`` and ``lora_deltas`` read either form. meta.json and
adapter_config.json stay plain: they hold ids, numbers and settings, never the user's words.
Pack adapters (``pack-adapters/``) are trained on a pack's shipped data and stay plain.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from assistant import crypto, paths
from assistant.errors import AdapterError

CURRENT = "CURRENT"
META = "meta.json"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")
# The config fields that decide whether an adapter's weights fit a model (its shapes and layout).
_SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size")


def base_fingerprint(model: Any) -> str:
    """A short hash of the model config fields an adapter depends on (recorded at publish)."""
    import hashlib

    config = model.config.to_dict() if hasattr(model, "config") else dict(model)
    picked = {k: config.get(k) for k in _SHAPE_KEYS}
    return hashlib.sha1(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:12]


class AdapterStore:
    def __init__(self, user: str, pack: str, root: Path | None = None) -> None:
        self.user, self.pack = user, pack
        self.user_data = root is None  # a user's own adapters: sealed when the data directory is encrypted
        self.root = root or paths.adapters_dir(user, pack)  # both names checked there

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(names, key=lambda n: int(n[1:]))

    def current(self) -> str | None:
        path = self.root / CURRENT
        try:
            name = path.read_text().strip()
        except FileNotFoundError:
            return None
        if not name:
            return None
        if not (self.root / name / WEIGHTS).is_file():
            raise AdapterError(
                f"{path} names {name!r}, which is missing. Run `assistant adapters rollback --user {self.user} "
                f"--pack {self.pack}` to pick a version, or delete {path} to use the base model."
            )
        return name

    def meta(self, version: str) -> dict[str, Any]:
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise AdapterError(f"no adapter version {version!r} for {self.user}/{self.pack} (versions look like v0003)")
        path = self.root / version / META
        if not path.is_file():
            raise AdapterError(f"no adapter version {version!r} for {self.user}/{self.pack}")
        return json.loads(path.read_text())

    def path(self, version: str) -> Path:
        return self.root / version

    def staging_dir(self) -> Path:
        """A fresh temporary folder on the same file system, to write a candidate into."""
        paths.private_dir(paths.inside_home(self.root))
        tmp = self.root / f".staging-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def clean_staging(self) -> None:
        """Remove candidates a crash left half-written, and versions a crash left half-deleted."""
        for pattern in (".staging-*", ".deleting-*"):
            for p in self.root.glob(pattern) if self.root.is_dir() else []:
                shutil.rmtree(p, ignore_errors=True)

    def delete(self, version: str) -> None:
        """Remove a version folder: renamed out of the version names first, so a crash mid-way
        never leaves a half-deleted folder that still looks like a version."""
        folder = paths.inside_home(self.root / version)
        if not folder.is_dir():
            return
        trash = self.root / f".deleting-{version}-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, trash)
        paths.fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def publish(self, staged: Path, meta: dict[str, Any], make_current: bool = True, base: Any = None) -> str:
        """Give ``staged`` the next version name, then (optionally) point CURRENT at it.

        ``base``: the model it was trained on; its config hash goes into meta.json as
        ``base_config`` so the adapter is never applied to another model (``misfit``)."""
        existing = self.versions()
        number = int(existing[-1][1:]) + 1 if existing else 1
        version = f"v{number:04d}"
        meta = dict(meta, version=version)
        if base is not None:
            meta["base_config"] = base_fingerprint(base)
        (staged / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        key, seal = crypto.stores_key() if self.user_data else (None, False)
        if seal and (staged / WEIGHTS).is_file():
            seal_weights(staged, key)
        paths.make_private(staged)
        for f in staged.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(staged, self.root / version)
        paths.fsync_dir(self.root)
        if make_current:
            self.set_current(version)
        return version

    def set_current(self, version: str | None) -> None:
        if version is not None and (not _VERSION_RE.match(str(version)) or not (self.root / version / WEIGHTS).is_file()):
            raise AdapterError(f"no adapter version {version!r} for {self.user}/{self.pack} (see `assistant adapters list`)")
        paths.write_private(paths.inside_home(self.root) / CURRENT, (version or "").encode())  # 0600, atomic

    def rollback(self, version: str | None = None) -> str | None:
        """Go back to ``version``, or to the version before the current one (None: base model)."""
        if version == "none":
            self.set_current(None)
            return None
        if version is None:
            cur = self.current()
            older = [v for v in self.versions() if cur is None or int(v[1:]) < int(cur[1:])]
            version = older[-1] if older else None
        self.set_current(version)
        return version

    def prune(self, keep: int) -> list[str]:
        """Delete all but the last ``keep`` versions, the best one and the current one."""
        versions = self.versions()
        cur = self.current()
        best = self.best()
        keep_set = set(versions[-keep:] if keep > 0 else []) | {v for v in (cur, best) if v}
        removed = [v for v in versions if v not in keep_set]
        for v in removed:
            self.delete(v)
        return removed

    def best(self) -> str | None:
        """The version with the lowest held-out loss the gate measured."""
        scored = []
        for v in self.versions():
            try:
                loss = self.meta(v).get("gate", {}).get("candidate", {}).get("user_loss")
            except (AdapterError, ValueError):
                continue
            if isinstance(loss, (int, float)):
                scored.append((loss, v))
        return min(scored)[1] if scored else None

    def misfit(self, version: str, model: Any) -> str | None:
        """Why ``version`` must not be applied to ``model`` (None: it fits). Checks the recorded
        base config hash, and for adapters without one the weight shapes."""
        try:
            meta = self.meta(version)
        except (AdapterError, ValueError):
            meta = {}
        recorded = meta.get("base_config")
        here = base_fingerprint(model)
        trained_on = meta.get("base_model") or "another model"
        fix = (f"it is not used. Retrain it for this model with `assistant learn --user {self.user} --pack {self.pack}`, "
               "or switch model.name back")
        if self.user in (PACK_USER, SHIPPED_USER):
            fix = f"it is not used. Train the pack's adapter for this model with `assistant pack train {self.pack}`"
        if recorded is not None:
            if recorded != here:
                return f"adapter {self.user}/{self.pack}/{version} was trained on {trained_on} (config {recorded}), not on this model (config {here}): {fix}"
            return None
        shapes = _adapter_shapes(self.root / version)
        params = dict(model.named_parameters())
        for name, (rows, cols) in shapes.items():
            p = params.get(name)
            if p is None or (rows is not None and p.shape[0] != rows) or (cols is not None and p.shape[1] != cols):
                return f"adapter {self.user}/{self.pack}/{version} does not fit this model ({name}): {fix}"
        return None

    def label(self, version: str) -> str:
        """How a reply and a round name this version: ``user/pack/vNNNN``."""
        return f"{self.user}/{self.pack}/{version}"

    def deltas(self, version: str, model: Any) -> dict[str, Any] | None:
        """The weight deltas of a version (peft's own ``get_delta_weight``), keyed by the base parameter name;
        None when it was trained on another model (``misfit`` says why)."""
        if self.misfit(version, model) is not None:
            return None
        return lora_deltas(self.root / version, model)


def training_ledger(data: Any, turns: Any = (), facts: Any = (), parent: tuple[AdapterStore, str] | None = None,
                    ) -> dict[str, list[str]]:
    """What a version was trained on: journal turn ids and memory ids (its own and its parent's).

    A turn's memories count too: they were in the prompt it was trained with. Forgetting uses
    this to find every version that saw a forgotten memory or turn (see assistant/privacy.py).
    """
    own = {ex.turn_id for ex in list(data.train) + list(getattr(data, "pairs", [])) + list(data.heldout)
           if getattr(ex, "turn_id", "")}
    memories = {m.id for m in facts}
    for t in turns:
        if t.id in own:
            memories |= set(t.memory_ids)
    if parent is not None:
        try:
            inherited = parent[0].meta(parent[1]).get("ledger") or {}
        except (AdapterError, ValueError):
            inherited = {}
        own |= set(inherited.get("turns", []))
        memories |= set(inherited.get("memories", []))
    return {"turns": sorted(own), "memories": sorted(memories)}


def saw(meta: dict[str, Any], turn_ids: set[str], memory_ids: set[str], since: float | None) -> bool:
    """Whether a version with this meta.json may have learned any of these turns or memories.

    Without a ledger (versions older than it), a version made after the forgotten data
    existed (``since``) is assumed to have seen it.
    """
    ledger = meta.get("ledger")
    if isinstance(ledger, dict):
        return bool(turn_ids & set(ledger.get("turns", [])) or memory_ids & set(ledger.get("memories", [])))
    created = meta.get("created")
    return since is None or not isinstance(created, (int, float)) or created >= since


PACK_USER = "_pack"  # the owner name of a pack's adapters trained on this machine
SHIPPED_USER = "_shipped"  # ... and of the one that came with the pack


def pack_store(pack: str) -> AdapterStore:
    """The pack's starting adapter (``assistant pack train``), shared by all users of the machine."""
    return AdapterStore(PACK_USER, pack, root=paths.pack_adapters_dir(pack))


def shipped_store(pack: str, folder: Path | None) -> AdapterStore | None:
    """The starting adapter a pack ships in its ``adapter/`` folder (read only), if it has one.

    A pack developer puts it there from ``assistant pack train`` (see docs/packs.md); one trained
    on this machine (``pack_store``) comes first."""
    if folder is None or not (folder / CURRENT).is_file():
        return None
    return AdapterStore(SHIPPED_USER, pack, root=folder)


def live_for(user: str, pack: str, model: Any = None, reasons: list[str] | None = None,
             shipped: Path | None = None) -> tuple[AdapterStore, str] | None:
    """The adapter that applies to ``user`` in ``pack``: their own, else the pack's trained on
    this machine, else the one the pack ships in ``shipped`` (its ``adapter/`` folder), else none.

    With ``model``, an adapter trained on another model is skipped and the reason (a notice for
    the user) is appended to ``reasons``."""
    stores = [AdapterStore(user, pack), pack_store(pack), shipped_store(pack, shipped)]
    for store in (s for s in stores if s is not None):
        current = store.current()
        if current is None:
            continue
        why = store.misfit(current, model) if model is not None else None
        if why is None:
            return store, current
        if reasons is not None:
            reasons.append(why)
    return None


def _adapter_shapes(folder: Path) -> dict[str, tuple[int | None, int | None]]:
    """Base parameter name -> (rows, columns) the adapter's B and A imply, from the file header."""
    try:
        data = read_weights(folder)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    except Exception:
        return {}
    out: dict[str, tuple[int | None, int | None]] = {}
    for key, shape in shapes.items():
        if ".lora_A." in key:
            module = key.split(".lora_A.")[0].replace("base_model.model.", "", 1)
            b = shapes.get(key.replace(".lora_A.", ".lora_B."))
            out[module + ".weight"] = (b[0] if b else None, shape[1])
    return out


def read_weights(folder: Path) -> bytes:
    """The bytes of a version's safetensors file, opened first when it is sealed."""
    data = (Path(folder) / WEIGHTS).read_bytes()
    if not crypto.is_sealed_blob(data):
        return data
    key = crypto.data_key()
    if key is None:
        raise AdapterError(f"the adapter in {folder} is encrypted, but {crypto.state_path()} is missing: "
                           "restore it from a backup of the data directory")
    return key.open(data, "adapter-weights")


def seal_weights(folder: Path, key: crypto.DataKey | None, seal: bool = True) -> bool:
    """Rewrite a version's weights sealed (or plain); False when they already were. Atomic per
    file (a temporary file, fsync, rename); the old file's bytes are zeroed."""
    path = Path(folder) / WEIGHTS
    data = path.read_bytes()
    if crypto.is_sealed_blob(data) == seal:
        return False
    if key is None:
        raise AdapterError(f"the adapter in {folder} is encrypted and no key is unlocked")
    crypto.replace_file(path, key.seal(data, "adapter-weights") if seal else key.open(data, "adapter-weights"))
    return True


def load_peft(base: Any, folder: Path, trainable: bool) -> Any:
    """A peft model of ``base`` with the adapter in ``folder`` (sealed weights opened in memory)."""
    from peft import PeftConfig, PeftModel, set_peft_model_state_dict

    if not _sealed_file(Path(folder) / WEIGHTS):
        return PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)
    from safetensors.torch import load

    config = PeftConfig.from_pretrained(str(folder))
    config.inference_mode = not trainable
    model = PeftModel(base, config)
    set_peft_model_state_dict(model, load(read_weights(folder)))
    if not trainable:
        model.eval()
    return model


def _sealed_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        return crypto.is_sealed_blob(fh.read(len(crypto.BLOB_MAGIC)))


def lora_deltas(folder: Path, model: Any) -> dict[str, Any]:
    """The weight change of every adapted layer, keyed by the base parameter name, as peft itself
    computes it (``get_delta_weight``: rank and alpha per module, rsLoRA scaling, fan-in/fan-out).
    The adapter is loaded into a copy of ``model``; the model itself is left as it was."""
    import copy

    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot read the adapter in {folder}: {exc}") from exc
    if config.get("use_dora"):
        raise AdapterError(f"the adapter in {folder} is a DoRA adapter, which cannot be added to the weights as a "
                           "delta: retrain it without use_dora (`assistant learn`)")
    names = {n for n, _ in model.named_parameters()}
    try:
        peft_model = load_peft(copy.deepcopy(model), folder, trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise AdapterError(f"the adapter in {folder} does not fit this model: {exc}") from exc
    out: dict[str, Any] = {}
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not hasattr(module, "get_delta_weight") or lora_a is None or "default" not in lora_a:
            continue
        weight = name.removeprefix("base_model.model.") + ".weight"
        if weight not in names:
            raise AdapterError(f"the adapter in {folder} does not fit this model ({name})")
        out[weight] = module.get_delta_weight("default").detach().float()
    return out
