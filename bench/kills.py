"""Crash-safety benchmark: random SIGKILLs during a user's writes, then a check of every store.

    python -m bench.kills [--kills 1000] [--seed 0] [--home DIR] [--kinds remember,forget,learn,publish]
                          [--fresh-every 10]

Four kinds of work run on one user (``kb``), each in a worker process that writes an
"acknowledged" line (fsynced) to its log after every operation the store reported committed
(and a "begin" line before it):

* remember: ``MemoryStore.add`` in a loop (what `assistant memory add` does);
* forget: adds a memory and a journal turn quoting it, then ``privacy.forget`` by id (that memory
  and up to two older ones), in a loop: the memory store's rebuild child, the journal's scrub and
  vacuum, the adapters' unlearning;
* learn: records a corrected turn, then a full learning round (``Learner.run_round``: train, gate,
  publish, prune) on a tiny random Llama, in a loop;
* publish: ``AdapterStore.publish`` of a fresh LoRA of the tiny model, with a rollback to an
  older version every 5th and a prune every 4th operation.

The parent kills the worker with SIGKILL after a random delay (counted from the worker's "ready"
line; one trial in ten from its start, so kills also land while stores open and recover), then a
new process opens the user's stores and checks them: the journal's ``integrity_check`` (before
the journal may salvage itself) and no damaged copy, the memory store opens without a repair,
chroma's SQLite is intact, every acknowledged memory is listed and a sample is searchable, no
acknowledged forget is listed, searchable or quoted in the journal, every acknowledged turn is in
the journal, CURRENT names a complete version (the acknowledged one or a newer one), every
version folder is complete, and no rebuild child of the killed worker is left running.

Startup is cheap because workers are forked from a "zygote" that has imported torch,
transformers, peft, chromadb and the embedder once (15 s on a loaded 2-core machine); it has run
no torch op in parallel (one thread), so forking it is safe. Checks are forked from it too (new
processes, nothing opened before), and every ``--fresh-every``-th check is a freshly started
interpreter (``python -m bench.kills --check``) that searches with the stored vectors instead of
loading the embedder. The output says how many checks were of each sort.

Exit status 1 when any store was corrupt, any acknowledged write lost, or any child orphaned.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

USER = "kb"
PACK = "general"
KINDS = ("remember", "forget", "learn", "publish")
# Seconds after "ready" within which the kill lands, per kind (a forget's rebuild child needs a
# fresh interpreter and chromadb's import, ~3-4 s here; a tiny learning round ~1-3 s).
DELAY = {"remember": (0.0, 1.5), "forget": (0.0, 5.0), "learn": (0.0, 4.0), "publish": (0.0, 1.0)}
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the tiny model
def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["The capital of France is Paris.", "You are a helpful assistant.", "user assistant system"] * 20,
                            trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def setup(home: Path) -> None:
    """The tiny model folder, config.toml, and a journal with corrected turns to learn from."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    folder = home.parent / "tiny-model"
    if not (folder / "config.json").exists():
        tok = _tiny_tokenizer()
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
            bos_token_id=0, pad_token_id=0)).eval()
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    (home / "config.toml").write_text(
        f'[model]\nname = "{folder}"\nprefill_dtype = "float32"\ndecode_dtype = "float32"\nthreads = 1\n'
        "[learning]\nmax_steps = 3\nlearning_rate = 0.005\neval_tolerance = 100.0\nguard_tolerance = 100.0\n"
        "time_budget_s = 60.0\n"
    )
    from assistant.journal import Journal, Turn, new_turn_id

    j = Journal(USER)
    if not j.turns():
        conv = j.new_conversation(PACK).id
        for i in range(6):
            t = Turn(id=new_turn_id(), conversation_id=conv, pack=PACK, created=time.time(), message=f"question {i}?",
                     prompt=[{"role": "user", "content": f"question {i}?"}], reply="bad")
            j.record(t)
            j.correct(t.id, f"Paris {i}")
    j.close()


# ---------------------------------------------------------------- the worker's log
class Log:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.seq = 0

    def begin(self, op: str, **data: Any) -> int:
        self.seq += 1
        os.write(self.fd, (json.dumps({"b": self.seq, "op": op, **data}) + "\n").encode())
        return self.seq

    def ack(self, seq: int, op: str, **data: Any) -> None:
        os.write(self.fd, (json.dumps({"a": seq, "op": op, **data}) + "\n").encode())
        os.fsync(self.fd)

    def add(self, store: Any, text: str) -> Any:
        """A memory add, logged before it starts and acknowledged once the store committed it."""
        seq = self.begin("add", text=text)
        m = store.add(text, "fact")
        self.ack(seq, "add", id=m.id, text=m.text)
        return m

    def ready(self) -> None:
        os.write(self.fd, b'{"ready": 1}\n')
        os.fsync(self.fd)


def _settings(**overrides: Any):
    from assistant import settings as settings_mod

    return settings_mod.load(env={}, overrides=overrides)


def work(kind: str, trial: int, log_path: Path, extra: dict[str, Any]) -> None:
    log = Log(log_path)
    getattr(sys.modules[__name__], f"_work_{kind}")(trial, log, extra)


def _work_remember(trial: int, log: Log, extra: dict[str, Any]) -> None:
    from memory.store import MemoryStore

    store = MemoryStore(USER, _settings().memory)
    log.ready()
    for i in range(10_000):
        log.add(store, f"Kill bench note {trial}.{i}: the locker code is RMB{trial}X{i}.")


def _work_forget(trial: int, log: Log, extra: dict[str, Any]) -> None:
    from assistant import privacy
    from assistant.core import Assistant
    from assistant.journal import Turn, new_turn_id
    from personalization.learner import Learner

    settings = _settings()
    assistant = Assistant(settings, learner=Learner)  # a forget also unlearns from the adapters
    store, journal = assistant.memory(USER), assistant.journal(USER)
    conv = journal.new_conversation(PACK).id
    older = list(extra.get("older", []))
    log.ready()
    for i in range(10_000):
        text = f"Forget bench secret {trial}.{i}: my PIN hint is FGT{trial}Q{i}."
        m = log.add(store, text)
        turn = Turn(id=new_turn_id(), conversation_id=conv, pack=PACK, created=time.time(), message="What is my PIN hint?",
                    prompt=[{"role": "user", "content": f"Notes: {text} What is my PIN hint?"}], reply="It is in your notes.",
                    memory_ids=[m.id])
        seq = log.begin("turn", id=turn.id, quotes=[m.id])
        journal.record(turn)
        log.ack(seq, "turn", id=turn.id, quotes=[m.id])
        ids = [m.id] + older[:2]
        older = older[2:]
        seq = log.begin("forget", ids=ids)
        receipt = privacy.forget(USER, settings, ids=ids, assistant=assistant)
        log.ack(seq, "forget", ids=[mid for mid, _ in receipt.memories], turns_deleted=receipt.turns_deleted,
                turns_rewritten=receipt.turns_rewritten)


def _work_learn(trial: int, log: Log, extra: dict[str, Any]) -> None:
    from assistant.adapters import AdapterStore
    from assistant.core import Assistant
    from assistant.journal import Turn, new_turn_id
    from personalization.learner import Learner

    assistant = Assistant(_settings(**{"memory.enabled": False}), learner=Learner)
    journal = assistant.journal(USER)
    learner = assistant.learner
    store = AdapterStore(USER, PACK)
    conv = journal.new_conversation(PACK).id
    _ = assistant.engine  # loads the tiny model
    log.ready()
    for i in range(10_000):
        turn = Turn(id=new_turn_id(), conversation_id=conv, pack=PACK, created=time.time(), message=f"Where {trial}.{i}?",
                    prompt=[{"role": "user", "content": f"Where {trial}.{i}?"}], reply="bad")
        seq = log.begin("turn", id=turn.id)
        journal.record(turn)
        journal.correct(turn.id, f"Paris {trial}.{i}")
        log.ack(seq, "turn", id=turn.id)
        seq = log.begin("round")
        result = learner.run_round(USER, PACK)
        log.ack(seq, "round", version=result.version, live=store.current(), versions=store.versions())


def _work_publish(trial: int, log: Log, extra: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    from assistant.adapters import AdapterStore
    from personalization import trainer

    settings = _settings()
    model = trainer.create(AutoModelForCausalLM.from_pretrained(settings.model.name), settings.learning)
    store = AdapterStore(USER, PACK)
    rng = random.Random(trial)
    log.ready()
    for i in range(1, 10_000):
        if i % 5 == 0 and store.current():
            cur = store.current() or "v0"
            older = [v for v in store.versions() if int(v[1:]) < int(cur[1:])]
            target = rng.choice(older) if older else None
            seq = log.begin("rollback", target=target)
            store.set_current(target)
            log.ack(seq, "rollback", live=target)
        elif i % 4 == 0:
            seq = log.begin("prune")
            removed = store.prune(3)
            log.ack(seq, "prune", removed=removed, live=store.current())
        else:
            staged = store.staging_dir()
            model.save_pretrained(str(staged))
            seq = log.begin("publish")
            version = store.publish(staged, {"gate": {}, "created": time.time(), "kill_bench": trial,
                                             "ledger": {"turns": [], "memories": []}})
            log.ack(seq, "publish", version=version, live=version)


# ---------------------------------------------------------------- the check (a new process)
class _StoredVectors:
    """An embedder stand-in for fresh checkers: the store's own id and size, no model loaded."""

    id = "sentence-transformers/all-MiniLM-L6-v2"
    dim = 384

    def embed(self, texts):
        raise RuntimeError("the fresh checker has no embedder: the store wanted to re-embed (damage)")


def check(job: dict[str, Any]) -> dict[str, Any]:
    from assistant import paths

    out: dict[str, Any] = {"corrupt": [], "memory_ids": {}, "search_missing": [], "forgotten_found": [],
                           "journal_turns": [], "forgotten_in_journal": [], "current": None, "versions": []}
    folder = paths.user_dir(USER)
    # journal: integrity first (Journal() would move a damaged file aside and salvage it)
    jpath = paths.journal_file(USER)
    if jpath.exists():
        try:
            db = sqlite3.connect(jpath, timeout=30)
            try:
                ok = db.execute("PRAGMA integrity_check").fetchall()
            finally:
                db.close()
            if ok != [("ok",)]:
                out["corrupt"].append(f"journal integrity_check: {ok[:3]}")
        except sqlite3.Error as exc:
            out["corrupt"].append(f"journal does not open: {exc}")
    if list(folder.glob("journal.sqlite3.damaged-*")):
        out["corrupt"].append("a damaged journal was moved aside")
    try:
        from assistant.journal import Journal

        j = Journal(USER)
        if j.notices:
            out["corrupt"].append(f"journal: {j.notices}")
        rows = j._db.execute("SELECT id, message, prompt, reply, coalesce(correction, '') FROM turns").fetchall()
        j.close()
        out["journal_turns"] = [r[0] for r in rows]
        blob = "\n".join("\n".join(r[1:]) for r in rows)
        out["forgotten_in_journal"] = [mid for mid, text in job["forgotten"].items() if text in blob]
    except Exception as exc:
        out["corrupt"].append(f"journal: {type(exc).__name__}: {exc}")
    # memory
    try:
        from memory.store import MemoryStore

        try:
            store = MemoryStore(USER, _settings().memory, embedder=_StoredVectors() if job["fresh"] else None)
        except RuntimeError as exc:
            if "no embedder" not in str(exc):
                raise
            # a damaged index: say so, then let the store repair itself with the real embedder, so
            # that what it still holds is compared (not reported lost because this checker cannot re-embed)
            out["corrupt"].append("memory store needed a repair (the fresh checker loaded the embedder for it)")
            job = dict(job, fresh=False)
            store = MemoryStore(USER, _settings().memory)
        if store.col.notices:
            out["corrupt"].append(f"memory store repaired itself: {store.col.notices}")
        out["rollbacks"] = list(store.col.rollbacks)  # a torn index save put back (see memory.chroma_files)
        listed = {m.id: m.text for m in store.list(include_superseded=True)}
        out["memory_ids"] = listed
        want = dict(job["search"])
        want.update(job["forgotten_search"])
        vectors = {}
        present = [i for i in want if i in listed]
        if job["fresh"] and present:
            got = store.col._col.get(ids=present, include=["embeddings"])
            vectors = {i: list(v) for i, v in zip(got["ids"], got["embeddings"], strict=False)}
        for mid, text in want.items():
            if mid not in listed and mid in job["forgotten_search"]:
                continue  # a forgotten one that is gone: search by its text (below) when we can
            if job["fresh"]:
                hits = store.col.query_vector(vectors[mid], 5) if mid in vectors else []
            else:
                hits = store.search(text, k=5)
            found = any(h.id == mid or h.text == text for h in hits)
            if mid in job["search"] and not found:
                out["search_missing"].append(mid)
        if not job["fresh"]:
            for mid, text in job["forgotten_search"].items():
                if any(h.text == text for h in store.search(text, k=3)):
                    out["forgotten_found"].append(mid)
        store.close()
        chroma = paths.memory_dir(USER) / "chroma.sqlite3"
        if chroma.exists():
            db = sqlite3.connect(f"file:{chroma}?mode=ro", uri=True)
            try:
                ok = db.execute("PRAGMA integrity_check").fetchall()
            finally:
                db.close()
            if ok != [("ok",)]:
                out["corrupt"].append(f"chroma.sqlite3 integrity_check: {ok[:3]}")
    except Exception as exc:
        out["corrupt"].append(f"memory store: {type(exc).__name__}: {exc}")
    # adapters
    from assistant.adapters import AdapterStore

    astore = AdapterStore(USER, PACK)
    try:
        out["current"] = astore.current()
    except Exception as exc:
        out["corrupt"].append(f"adapters CURRENT: {exc}")
    out["versions"] = astore.versions()
    for v in out["versions"]:
        why = _incomplete(astore.path(v), v)
        if why:
            out["corrupt"].append(f"adapter {v}{' (live)' if v == out['current'] else ''} is not complete: {why}")
    state = astore.root / "state.json"
    if state.exists():
        try:
            json.loads(state.read_text())
        except ValueError as exc:
            out["corrupt"].append(f"adapters state.json: {exc}")
    return out


def _incomplete(folder: Path, version: str) -> str:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != version:
            return f"meta.json says {meta.get('version')!r}"
        json.loads((folder / "adapter_config.json").read_text())
        data = (folder / "adapter_model.safetensors").read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + size + end != len(data):
            return "safetensors size does not match its header"
    except (OSError, ValueError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


# ---------------------------------------------------------------- the zygote
def zygote() -> None:
    """Import everything once, then fork a worker or a checker per request (JSON lines on stdin)."""
    import torch

    torch.set_num_threads(1)
    import chromadb  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from assistant import core, privacy  # noqa: F401
    from memory import embedder
    from memory.chroma import die_with_parent
    from memory.store import MemoryStore  # noqa: F401
    from personalization import learner, trainer  # noqa: F401

    die_with_parent(os.getppid())  # the zygote goes when the benchmark does
    embedder.get("default")
    inp, outp = sys.stdin.buffer, sys.stdout.buffer
    outp.write(b'{"ready": 1}\n')
    outp.flush()
    for line in inp:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.setpgid(0, 0)
                fd = os.open(req["stdio"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(0)
                if req["cmd"] == "work":
                    work(req["kind"], req["trial"], Path(req["log"]), req["extra"])
                else:
                    result = check(req["job"])
                    Path(req["out"]).write_text(json.dumps(result))
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 3
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        outp.write((json.dumps({"pid": pid}) + "\n").encode())
        outp.flush()
        if req["cmd"] == "check":
            _, status = os.waitpid(pid, 0)
            outp.write((json.dumps({"status": status}) + "\n").encode())
            outp.flush()
        else:  # the parent kills it; reap it here when it ends (killed or not)
            _, status = os.waitpid(pid, 0)
            outp.write((json.dumps({"status": status}) + "\n").encode())
            outp.flush()


class Zygote:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.kills", "--zygote"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        assert json.loads(self._line(300)).get("ready")

    def _line(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the zygote did not answer")
        line = self.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        return line

    def start(self, req: dict[str, Any]) -> int:
        self.stdin.write((json.dumps(req) + "\n").encode())
        self.stdin.flush()
        return json.loads(self._line(60))["pid"]

    def status(self, timeout: float) -> int:
        return json.loads(self._line(timeout))["status"]

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------- the parent
def _rebuild_children(pid: int) -> list[int]:
    """Live processes that are a memory store rebuild child of ``pid``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            state = (p / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(b"_build_child" in a for a in argv) and str(pid).encode() in argv[-3:]:
            found.append(int(p.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _read_log(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, bool]:
    """(acknowledged ops, the op in flight when killed (begun, never acknowledged), ready seen)."""
    begun: dict[int, dict[str, Any]] = {}
    acked: list[dict[str, Any]] = []
    ready = False
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill (never an acknowledged one: those are fsynced whole)
        if "ready" in row:
            ready = True
        elif "b" in row:
            begun[row["b"]] = row
        elif "a" in row:
            begun.pop(row["a"], None)
            acked.append(row)
    inflight = max(begun.items())[1] if begun else None
    return acked, inflight, ready


class Expected:
    """What every acknowledged operation so far says the stores must hold."""

    def __init__(self) -> None:
        self.memories: dict[str, str] = {}  # must be listed and searchable
        self.forgotten: dict[str, str] = {}  # must be gone everywhere
        self.cut_short: set[str] = set()  # gone from the memory store after a forget that the kill cut short
        self.turns: set[str] = set()  # must be in the journal
        self.quoting: dict[str, set[str]] = {}  # memory id -> turns quoting it (a forget removes them)
        self.live: str | None = None
        self.live_known = False
        self.newest = 0  # the highest version number acknowledged or seen

    def merge(self, acked: list[dict[str, Any]], inflight: dict[str, Any] | None) -> dict[str, Any]:
        for row in acked:
            op = row["op"]
            if op == "add":
                self.memories[row["id"]] = row["text"]
            elif op == "turn":
                self.turns.add(row["id"])
                for mid in row.get("quotes", []):
                    self.quoting.setdefault(mid, set()).add(row["id"])
            elif op == "forget":
                for mid in row["ids"]:
                    if mid in self.memories:
                        self.forgotten[mid] = self.memories.pop(mid)
                    self.turns -= self.quoting.pop(mid, set())
            elif op in ("publish", "rollback", "round", "prune"):
                self.live, self.live_known = row.get("live"), True
                for v in [row.get("version")] + row.get("versions", []):
                    if v:
                        self.newest = max(self.newest, int(v[1:]))
        uncertain: dict[str, Any] = {"memories": set(), "texts": set(), "turns": set(), "any_live": False}
        if inflight:
            op = inflight["op"]
            if op == "add":
                uncertain["texts"].add(inflight["text"])
            elif op == "turn":
                uncertain["turns"].add(inflight["id"])
            elif op == "forget":
                for mid in inflight["ids"]:
                    uncertain["memories"].add(mid)
                    uncertain["turns"] |= self.quoting.get(mid, set())
            elif op == "rollback":
                uncertain["rollback"] = inflight["target"]
        return uncertain


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="kills-")) / "home"
    home.mkdir(parents=True, exist_ok=True)
    work_dir = home.parent / "kills-work"
    work_dir.mkdir(exist_ok=True)
    env = dict(os.environ, ASSISTANT_HOME=str(home), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("ASSISTANT_LOCK_WAIT_S", None)
    kinds = [k for k in args.kinds.split(",") if k]
    t_start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.kills", "--setup"], cwd=ROOT, env=env, check=True)
    zyg = Zygote(env)
    print(f"home {home}; setup and zygote ready in {time.perf_counter() - t_start:.1f} s", flush=True)
    exp = Expected()
    stats = {k: {"kills": 0, "exited": 0, "corrupt": 0, "lost": 0, "orphans": 0, "put_back": 0, "acked": 0, "ready_s": 0.0,
                 "work_s": 0.0, "check_s": 0.0} for k in kinds}
    checks = {"fresh": 0, "forked": 0}
    problems: list[str] = []
    seen_corrupt: set[str] = set()
    seen_lost: set[str] = set()
    kept_logs = 0
    for trial in range(args.kills):
        kind = rng.choice(kinds)
        st = stats[kind]
        log = work_dir / f"t{trial}.log"
        stdio = work_dir / f"t{trial}.out"
        extra = {"older": rng.sample(sorted(exp.memories), min(2, len(exp.memories))) if kind == "forget" else []}
        early = rng.random() < 0.1
        t0 = time.monotonic()
        pid = zyg.start({"cmd": "work", "kind": kind, "trial": trial, "log": str(log), "stdio": str(stdio), "extra": extra})
        lo, hi = DELAY[kind]
        if early:
            delay, origin = rng.uniform(0.0, 1.5), t0
        else:
            while time.monotonic() - t0 < 120 and not _read_log(log)[2] and _alive(pid):
                time.sleep(0.01)
            delay, origin = rng.uniform(lo, hi), time.monotonic()
            st["ready_s"] += origin - t0
        while time.monotonic() - origin < delay:
            time.sleep(0.005)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = zyg.status(120)
        st["work_s"] += time.monotonic() - t0
        t_check = time.monotonic()
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        st["kills" if killed else "exited"] += 1
        trial_problems: list[str] = []
        if not killed:
            trial_problems.append(f"worker ended by itself (status {status}): "
                                  f"{stdio.read_text()[-600:] if stdio.exists() else ''}")
        # orphans: the memory store's rebuild child must die with the killed worker
        deadline = time.monotonic() + 5
        orphans = _rebuild_children(pid)
        while orphans and time.monotonic() < deadline:
            time.sleep(0.1)
            orphans = _rebuild_children(pid)
        if orphans:
            st["orphans"] += len(orphans)
            trial_problems.append(f"rebuild child(ren) {orphans} outlived the killed worker {pid}")
            for o in orphans:
                try:
                    os.kill(o, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        acked, inflight, _ = _read_log(log)
        st["acked"] += len(acked)
        unc = exp.merge(acked, inflight)
        fresh = args.fresh_every > 0 and trial % args.fresh_every == args.fresh_every - 1
        checks["fresh" if fresh else "forked"] += 1
        this_trial = {r["id"]: r["text"] for r in acked if r["op"] == "add" and r["id"] in exp.memories}
        sample = dict(rng.sample(sorted(exp.memories.items()), min(10, len(exp.memories))))
        sample.update(this_trial)
        sample = {k: v for k, v in sample.items() if k not in unc["memories"]}
        recent_forgotten = dict(list(exp.forgotten.items())[-20:])
        job = {"fresh": fresh, "search": sample, "forgotten_search": recent_forgotten, "forgotten": recent_forgotten}
        out_path = work_dir / f"t{trial}.check.json"
        if fresh:
            proc = subprocess.run([sys.executable, "-m", "bench.kills", "--check", json.dumps(job), str(out_path)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(work_dir / f"t{trial}.checkerr", "w"),
                                  timeout=600)
            ok = proc.returncode == 0
        else:
            zyg.start({"cmd": "check", "job": job, "out": str(out_path), "stdio": str(work_dir / f"t{trial}.checkerr")})
            ok = zyg.status(600) == 0
        st["check_s"] += time.monotonic() - t_check
        if not ok or not out_path.exists():
            err = (work_dir / f"t{trial}.checkerr").read_text()[-800:]
            trial_problems.append(f"the checker failed: {err}")
            got = None
            st["corrupt"] += 1
        else:
            got = json.loads(out_path.read_text())
        if got is not None:
            corrupt = list(got["corrupt"])
            st["put_back"] += bool(got.get("rollbacks"))
            lost: list[str] = []
            have = got["memory_ids"]
            for mid, text in exp.memories.items():
                if mid in unc["memories"]:
                    continue
                if have.get(mid) != text:
                    lost.append(f"acknowledged memory {mid} ({text[:40]}) is not listed")
            lost += [f"acknowledged memory {mid} is listed but not found by search" for mid in got["search_missing"]]
            for mid in exp.forgotten:
                if mid in have:
                    lost.append(f"acknowledged forget of {mid} did not take: still listed")
            lost += [f"acknowledged forget of {mid}: search still finds it" for mid in got["forgotten_found"]]
            lost += [f"{'a forget cut short by the kill' if mid in exp.cut_short else 'an acknowledged forget'} removed "
                     f"{mid}, but the journal still quotes it" for mid in got["forgotten_in_journal"]]
            turns = set(got["journal_turns"])
            for tid in exp.turns - unc["turns"] - turns:
                lost.append(f"acknowledged journal turn {tid} is missing")
            cur = got["current"]
            num = int(cur[1:]) if cur else 0
            if exp.live_known and cur != exp.live and num <= exp.newest and not (
                    "rollback" in unc and cur == unc["rollback"]):
                lost.append(f"CURRENT is {cur}, the acknowledged live version is {exp.live}")
            # adopt what the store now holds for the operation that was in flight
            for mid in unc["memories"]:
                if mid in have:
                    exp.memories.setdefault(mid, have[mid])
                    exp.forgotten.pop(mid, None)
                elif mid in exp.memories:  # the kill came after the memory went: the rest must have gone before it
                    exp.forgotten[mid] = exp.memories.pop(mid)
                    exp.cut_short.add(mid)
            for text in unc["texts"]:
                for mid, t in have.items():
                    if t == text:
                        exp.memories[mid] = t
            exp.turns |= unc["turns"] & turns
            exp.turns -= unc["turns"] - turns
            exp.live, exp.live_known = cur, True
            exp.newest = max([exp.newest] + [int(v[1:]) for v in got["versions"]])
            # a damaged store stays damaged: count it at the check that found it, not at every later one
            new_corrupt = [c for c in corrupt if c not in seen_corrupt]
            seen_corrupt = set(corrupt)
            if new_corrupt:
                st["corrupt"] += 1
            new_lost = [x for x in lost if x not in seen_lost]  # each loss counted once, at the check that found it
            seen_lost = set(lost)
            if new_lost:
                st["lost"] += len(new_lost)
            trial_problems += corrupt + lost
        if trial_problems:
            kept_logs += 1
            problems.append(f"trial {trial} ({kind}{', early' if early else ''}, delay {delay:.2f}s, "
                            f"{'fresh' if fresh else 'forked'} check): " + " | ".join(trial_problems))
            print(problems[-1], flush=True)
        else:
            for p in (log, stdio, out_path, work_dir / f"t{trial}.checkerr"):
                p.unlink(missing_ok=True)
        if (trial + 1) % args.progress == 0:
            el = time.perf_counter() - t_start
            print(f"[{trial + 1}/{args.kills}] {el:.0f} s; so far corrupt {sum(s['corrupt'] for s in stats.values())}, "
                  f"lost {sum(s['lost'] for s in stats.values())}, orphans {sum(s['orphans'] for s in stats.values())}, "
                  f"no-kill {sum(s['exited'] for s in stats.values())}; memories held {len(exp.memories)}, forgotten "
                  f"{len(exp.forgotten)}, turns {len(exp.turns)}, live adapter {exp.live}", flush=True)
    zyg.close()
    elapsed = time.perf_counter() - t_start
    print()
    print(f"{'kind':10} {'kills':>6} {'no-kill':>8} {'acked ops':>10} {'corrupt':>8} {'lost':>6} {'orphans':>8} "
          f"{'put back':>9}")
    total: dict[str, float] = {k: 0 for k in ("kills", "exited", "acked", "corrupt", "lost", "orphans", "put_back")}
    for kind in kinds:
        s = stats[kind]
        print(f"{kind:10} {s['kills']:>6} {s['exited']:>8} {s['acked']:>10} {s['corrupt']:>8} {s['lost']:>6} {s['orphans']:>8} "
              f"{s['put_back']:>9}")
        for k in total:
            total[k] += s[k]
    print(f"{'total':10} {total['kills']:>6} {total['exited']:>8} {total['acked']:>10} {total['corrupt']:>8} "
          f"{total['lost']:>6} {total['orphans']:>8} {total['put_back']:>9}")
    print("put back: checks whose store found a torn index save and put back the index as last saved "
          "(chromadb then replayed its log; not a repair, nothing re-embedded)")
    print("mean seconds per trial: " + "; ".join(
        f"{k} ready {stats[k]['ready_s'] / max(1, stats[k]['kills'] + stats[k]['exited']):.2f}, worked "
        f"{stats[k]['work_s'] / max(1, stats[k]['kills'] + stats[k]['exited']):.2f}, check "
        f"{stats[k]['check_s'] / max(1, stats[k]['kills'] + stats[k]['exited']):.2f}" for k in kinds))
    print(f"checks: {checks['fresh']} in a freshly started interpreter (stored vectors), {checks['forked']} in a "
          f"process forked from the pre-imported zygote (real embedder search)")
    print(f"{args.kills} trials in {elapsed:.0f} s ({elapsed / max(1, args.kills):.2f} s each); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; seed {args.seed}; home {home}")
    print(f"corrupt stores: {total['corrupt']}, lost committed writes: {total['lost']}, orphaned children: "
          f"{total['orphans']}, workers that ended before their kill: {total['exited']}")
    bad = total["corrupt"] or total["lost"] or total["orphans"] or total["exited"]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", help="the data directory to use (default: a new temporary one)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--fresh-every", type=int, default=10, help="every Nth check in a freshly started interpreter")
    p.add_argument("--progress", type=int, default=20, help="print a progress line every N trials")
    p.add_argument("--zygote", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--check", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.zygote:
        zygote()
        return 0
    if args.setup:
        from assistant import paths

        setup(paths.home())
        return 0
    if args.check:
        Path(args.check[1]).write_text(json.dumps(check(json.loads(args.check[0]))))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
