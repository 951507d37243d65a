"""Three writers on one user at once: a TUI-like in-process Assistant, a CLI process and the API
server (a real uvicorn in its own process). Each adds and forgets memories for a bounded time,
retrying when the store says it is in use by another process; then every committed memory must be
listed and searchable in every process, and every forget must have taken effect in every process.
Real chromadb, the real embedder, real processes; the language model is never loaded."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from api import keys as api_keys
from assistant import privacy
from assistant import settings as settings_mod
from assistant.errors import MemoryStoreError, StoreBusyError

ROOT = Path(__file__).resolve().parent.parent
USER = "alice"
WINDOW_S = 30.0  # how long each writer starts new operations
LOCK_WAIT_S = "3"  # short waits, so writers meet "in use by PID N; try again" and must retry
# Each writer pauses 0.2-0.6 s between operations, as people and apps do: the lock (flock) is not
# fair, and a writer that locks again the moment it unlocks starves the others' bounded waits.
THINK_S = (0.2, 0.6)

_SERVER = r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
import uvicorn
from assistant import settings as settings_mod
from api import make_app
from assistant.core import Assistant

app = make_app(Assistant(settings_mod.load(env={})))
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""

# The CLI writer: `assistant memory add/forget/list` through the CLI's own entry point, one call
# per command as a shell would run them (each call opens and closes the store), in one process so
# that an interpreter start (15 s on a loaded machine) is paid once.
_CLI = r"""
import contextlib, io, json, random, re, sys, time
sys.path.insert(0, sys.argv[1])
from cli.main import main
from memory import embedder
embedder.get("default")
window, user = float(sys.argv[2]), sys.argv[3]
rng = random.Random(2)

def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()

print("ready", flush=True)
sys.stdin.readline()
deadline = time.monotonic() + window
added, forgotten, gone, retries, errors = [], [], [], 0, []
i = 0
while time.monotonic() < deadline:
    i += 1
    if i % 3 == 0 and added:
        victim = rng.choice([a for a in added if a[0] not in forgotten and a[0] not in gone] or [added[-1]])
        argv = ("memory", "forget", "--user", user, victim[0])
    else:
        argv = ("memory", "add", "--user", user, f"CLI note {i}: the shed code is CLI{i}K{rng.randrange(10**6)}.")
    while True:
        rc, out, err = cli(*argv)
        if rc == 75 and "in use by" in err:
            retries += 1
            time.sleep(0.1)
            continue
        break
    if rc != 0:
        if argv[1] == "forget" and "no memory" in err:
            gone.append(argv[-1])  # another writer forgot it first
        else:
            errors.append((argv, rc, err[-500:]))
    elif argv[1] == "add":
        m = re.match(r"added (\S+): (.*)", out.strip())
        added.append((m.group(1), m.group(2)))
    else:
        forgotten.append(argv[-1])
    time.sleep(rng.uniform(0.2, 0.6))  # think time (see THINK_S in the test)
print(json.dumps({"added": added, "forgotten": forgotten, "retries": retries, "errors": errors}), flush=True)
"""


def _busy(resp: httpx.Response) -> bool:
    """The server's "in use by PID N; try again" (503 store_busy, Retry-After): the one answer to retry."""
    return resp.status_code == 503 and resp.json()["error"]["code"] == "store_busy"


def test_a_busy_store_is_a_503_to_retry_not_a_bad_request():
    from api.errors import error_response, from_assistant_error

    err = from_assistant_error(StoreBusyError("alice's memory and journal are in use by PID 7; try again in a moment"))
    assert (err.status, err.code) == (503, "store_busy")
    assert error_response(err).headers["retry-after"] == "1"


class Writer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.added: dict[str, str] = {}
        self.forgotten: set[str] = set()
        self.retries = 0
        self.errors: list[str] = []


def _retrying(w: Writer, fn):
    """Run ``fn``, again after "in use by PID N; try again" (a read too: it reopens a store that
    another process changed, under the lock)."""
    while True:
        try:
            return fn()
        except StoreBusyError:
            w.retries += 1
            time.sleep(0.1)


def _tui_writer(w: Writer, assistant, settings, deadline: float) -> None:
    """What the TUI does: one long-lived Assistant and store; forgetting through the privacy service."""
    rng = random.Random(1)
    store = assistant.memory(USER)
    i = 0
    while time.monotonic() < deadline:
        i += 1
        try:
            if i % 3 == 0:
                # forget one of its own, or (every other time) one another process added
                others = [m for m in _retrying(w, store.list) if not m.text.startswith("TUI")] if i % 2 else []
                pool = [m.id for m in others] or [mid for mid in w.added if mid not in w.forgotten]
                if not pool:
                    continue
                victim = rng.choice(pool)
                receipt = _retrying(w, lambda victim=victim: privacy.forget(USER, settings, ids=[victim], assistant=assistant))
                w.forgotten |= {mid for mid, _ in receipt.memories}
            else:
                text = f"TUI note {i}: the bike lock code is TUI{i}B{rng.randrange(10**6)}."
                m = _retrying(w, lambda text=text: store.add(text, "fact"))
                w.added[m.id] = m.text
        except MemoryStoreError as exc:
            if "no memory" not in str(exc):  # another writer forgot it between list and forget
                w.errors.append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            w.errors.append(f"{type(exc).__name__}: {exc}")
        time.sleep(rng.uniform(*THINK_S))


def _api_writer(w: Writer, url: str, key: str, deadline: float) -> None:
    rng = random.Random(3)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        def call(method: str, path: str, **kw) -> httpx.Response:
            while True:
                resp = http.request(method, path, **kw)
                if not _busy(resp):
                    return resp
                w.retries += 1
                time.sleep(0.1)

        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                if i % 3 == 0:
                    if i % 2:
                        listed = call("GET", "/v1/memories", params={"user": USER}).json()["data"]
                        pool = [m["id"] for m in listed if not m["text"].startswith("API")]
                    else:
                        pool = [mid for mid in w.added if mid not in w.forgotten]
                    if not pool:
                        continue
                    victim = rng.choice(pool)
                    resp = call("DELETE", f"/v1/memories/{victim}", params={"user": USER})
                    if resp.status_code == 200:
                        w.forgotten.add(victim)
                    elif resp.status_code != 404:  # 404: another writer forgot it first
                        w.errors.append(f"DELETE {resp.status_code}: {resp.text[:300]}")
                else:
                    text = f"API note {i}: the gate code is API{i}G{rng.randrange(10**6)}."
                    resp = call("POST", "/v1/memories", json={"user": USER, "text": text, "kind": "fact"})
                    if resp.status_code == 201:
                        w.added[resp.json()["id"]] = resp.json()["text"]
                    else:
                        w.errors.append(f"POST {resp.status_code}: {resp.text[:300]}")
            except httpx.HTTPError as exc:
                w.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(rng.uniform(*THINK_S))


def _ids(listing: str) -> set[str]:
    return {line.split()[0] for line in listing.splitlines() if line.strip().startswith("m")}


@pytest.mark.slow  # a uvicorn process, a CLI process and an in-process writer for 30 s
@pytest.mark.timeout(900)
def test_tui_cli_and_api_writers_on_one_user(home, monkeypatch):
    from assistant.core import Assistant

    monkeypatch.setenv("ASSISTANT_LOCK_WAIT_S", LOCK_WAIT_S)
    env = dict(os.environ, ASSISTANT_HOME=str(home), ASSISTANT_LOCK_WAIT_S=LOCK_WAIT_S, PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1")
    key = api_keys.create("concurrency", "memory:read,memory:write", users=[USER])
    settings = settings_mod.load(env={})
    assistant = Assistant(settings)
    store = assistant.memory(USER)
    seeded = {m.id: m.text for m in (store.add("I like green tea.", "preference"), store.add("I live in Leeds.", "fact"))}

    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(ROOT)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    cli = subprocess.Popen([sys.executable, "-c", _CLI, str(ROOT), str(WINDOW_S), USER], env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(_readline(server, 300))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:  # the server answers once the app is up (the store opens on the first request)
            try:
                if httpx.get(f"{url}/v1/memories", params={"user": USER}, headers={"Authorization": f"Bearer {key}"},
                             timeout=120).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        assert _readline(cli, 300) == "ready"

        tui, api = Writer("tui"), Writer("api")
        cli.stdin.write("go\n")
        cli.stdin.flush()
        stop_at = time.monotonic() + WINDOW_S
        threads = [threading.Thread(target=_tui_writer, args=(tui, assistant, settings, stop_at), daemon=True),
                   threading.Thread(target=_api_writer, args=(api, url, key, stop_at), daemon=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
            assert not t.is_alive(), "a writer hung"
        out, err = cli.communicate(timeout=300)
        assert cli.returncode == 0, err[-3000:]
        got = json.loads(out.strip().splitlines()[-1])
        cli_w = Writer("cli")
        cli_w.added, cli_w.forgotten, cli_w.retries = dict(got["added"]), set(got["forgotten"]), got["retries"]
        cli_w.errors = [str(e) for e in got["errors"]]

        writers = (tui, cli_w, api)
        report = {w.name: {"added": len(w.added), "forgot": len(w.forgotten), "retries": w.retries} for w in writers}
        print(f"writers: {report}")
        for w in writers:
            assert not w.errors, f"{w.name}: {w.errors[:5]}"
            assert len(w.added) >= 2, f"{w.name} committed too little to test anything: {report}"
        assert sum(len(w.forgotten) for w in writers) >= 2, report
        added = dict(seeded)
        for w in writers:
            added.update(w.added)
        gone = set().union(*(w.forgotten for w in writers))
        kept = {mid: text for mid, text in added.items() if mid not in gone}
        gone_texts = {mid: added[mid] for mid in gone}

        # the TUI's long-lived store, which other processes changed under it
        listed = {m.id: m.text for m in store.list()}
        assert set(kept) <= set(listed), f"committed but not listed in the TUI: {sorted(set(kept) - set(listed))}"
        assert not gone & set(listed), f"forgotten but still listed in the TUI: {sorted(gone & set(listed))}"
        assert set(listed) == set(kept), f"listed but never committed: {sorted(set(listed) - set(kept))}"
        for mid, text in kept.items():
            assert mid in {m.id for m in store.search(text, k=5)}, f"{mid} ({text}) is not searchable in the TUI"
        for mid, text in gone_texts.items():
            assert all(m.text != text for m in store.search(text, k=5)), f"the TUI still finds forgotten {mid}"
            assert all(m.text != text for m in store.recall(text)), f"the TUI still recalls forgotten {mid}"

        # the server process
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            served = {m["id"] for m in http.get("/v1/memories", params={"user": USER}).json()["data"]}
            assert served == set(kept), (f"server: missing {sorted(set(kept) - served)}, "
                                         f"forgotten but served {sorted(served & gone)}")
            for mid, text in gone_texts.items():
                hits = http.get("/v1/memories", params={"user": USER, "q": text, "k": 5}).json()["data"]
                assert all(h["text"] != text for h in hits), f"the server still finds forgotten {mid}"
            for mid, text in list(kept.items())[:: max(1, len(kept) // 8)]:
                hits = http.get("/v1/memories", params={"user": USER, "q": text, "k": 5}).json()["data"]
                assert mid in {h["id"] for h in hits}, f"the server cannot find {mid} ({text})"

        # a new CLI process
        listing = subprocess.run([sys.executable, "-m", "cli", "memory", "list", "--user", USER], env=env,
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert listing.returncode == 0, listing.stderr[-2000:]
        assert _ids(listing.stdout) == set(kept), (f"CLI: missing {sorted(set(kept) - _ids(listing.stdout))}, "
                                                   f"forgotten but listed {sorted(_ids(listing.stdout) & gone)}")
    finally:
        for p in (server, cli):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
        assistant.forget_user_handles(USER)


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box or not box[0]:
        proc.kill()
        raise AssertionError(f"no answer from {proc.args[:3]}: {proc.stderr.read()[-3000:]}")
    return box[0].strip()
