"""The local API, served for real by uvicorn on a free loopback port, around a tiny engine."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from api import keys as api_keys
from assistant import paths
from assistant import settings as settings_mod
from cli.main import main as cli_main


class Server:
    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.time() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _settings(**api):
    s = settings_mod.load(env={})
    s.generation.max_new_tokens = 16
    s.generation.temperature = 0.0
    for k, v in api.items():
        setattr(s.api, k, v)
    return s


@pytest.fixture
def keys(home):
    return {
        "all": api_keys.create("all", "chat,memory:read,memory:write,feedback", users="*"),
        "chat": api_keys.create("chatonly", "chat", users="*"),
        "mem": api_keys.create("memread", "memory:read", users="*"),
    }


@pytest.fixture
def server(tiny_engine, keys):
    from api import make_app
    from assistant.core import Assistant

    tiny_engine.context_tokens = 512  # the tiny model's positions; the pack persona needs room
    assistant = Assistant(_settings(max_body_bytes=64_000), engine=tiny_engine)
    with Server(make_app(assistant)) as srv:
        srv.assistant = assistant
        yield srv


def _h(key):
    return {"Authorization": f"Bearer {key}"}


def _chat_body(text="Hello there", **kw):
    return {"model": "general", "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0, **kw}


# ------------------------------------------------------------------------------ keys and CLI
def test_keys_store_only_salted_hashes_and_check_scopes(home):
    key = api_keys.create("app1", ["memory:read", "chat"])
    other = api_keys.create("app2", "feedback")
    raw = (paths.api_dir() / "keys.json").read_text()
    assert key not in raw and other not in raw
    assert api_keys.check(key) == ("app1", ["chat", "memory:read"])
    assert api_keys.check(other) == ("app2", ["feedback"])
    assert api_keys.check(key + "x") is None and api_keys.check("") is None
    entries = json.loads(raw)["keys"]
    assert entries[0]["salt"] != entries[1]["salt"]
    assert [k["name"] for k in api_keys.list()] == ["app1", "app2"]
    api_keys.revoke("app1")
    assert api_keys.check(key) is None
    with pytest.raises(Exception, match="no API key"):
        api_keys.revoke("app1")
    with pytest.raises(Exception, match="unknown scope"):
        api_keys.create("app3", "chat,admin")
    with pytest.raises(Exception, match="exists already"):
        api_keys.create("app2", "chat")


def test_cli_api_key_commands(home, capsys):
    assert cli_main(["api-key", "create", "notes", "--user", "me", "--scopes", "chat,memory:read"]) == 0
    key = capsys.readouterr().out.strip()
    assert api_keys.check(key) == ("notes", ["chat", "memory:read"])
    assert cli_main(["api-key", "list"]) == 0
    assert "notes" in capsys.readouterr().out
    assert cli_main(["api-key", "create", "bad", "--scopes", "root"]) == 2
    assert cli_main(["api-key", "revoke", "notes"]) == 0
    assert api_keys.check(key) is None
    assert cli_main(["api-key", "revoke", "notes"]) == 2


def test_cli_serve_refuses_remote_host_without_flag(home, capsys):
    assert cli_main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


# ------------------------------------------------------------------------------ chat
@pytest.mark.slow
def test_openai_client_chat_and_stream(server, keys):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key=keys["all"], max_retries=0)
    models = [m.id for m in client.models.list().data]
    assert "general" in models
    out = client.chat.completions.create(model="general", messages=[{"role": "user", "content": "Hello there"}],
                                         max_tokens=8, temperature=0)
    assert out.id.startswith("chatcmpl-")
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.completion_tokens >= 1 and out.usage.prompt_tokens > 10
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    turn_id = out.id[len("chatcmpl-"):]
    turn = server.assistant.journal("me").turn(turn_id)
    assert turn is not None and turn.source == "api" and turn.reply == out.choices[0].message.content
    assert turn.finish_reason and out.usage.prompt_tokens == len(server.assistant.engine.render(turn.prompt))

    stream = client.chat.completions.create(
        model="general", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    for ev in stream:
        if ev.choices:
            parts.append(ev.choices[0].delta.content or "")
            finish = ev.choices[0].finish_reason or finish
        if ev.usage:
            usage = ev.usage
    assert "".join(parts) == out.choices[0].message.content  # greedy: same answer
    assert finish in ("stop", "length") and usage.completion_tokens == out.usage.completion_tokens


@pytest.mark.slow  # a real HTTP server
def test_stream_is_sse_and_ends_with_done(server, keys):
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers=_h(keys["chat"]),
                      json=_chat_body(stream=True), timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    turn_id = last["turn_id"]
    # feedback with the stream's id reaches that turn
    fb = httpx.post(f"{server.url}/v1/feedback", headers=_h(keys["all"]), json={"completion_id": last["id"], "rating": 1})
    assert fb.status_code == 200, fb.text
    assert server.assistant.journal("me").turn(turn_id).rating == 1


@pytest.mark.slow  # a real HTTP server
def test_multi_turn_history_and_system_message(server, keys):
    body = {
        "model": "general", "max_tokens": 4, "user": "alice",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": [{"type": "text", "text": "Second question"}]},
        ],
    }
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=_h(keys["chat"]), json=body, timeout=30)
    assert r.status_code == 200, r.text
    turn = server.assistant.journal("alice").turn(r.json()["turn_id"])
    contents = [m["content"] for m in turn.prompt]
    assert [m["role"] for m in turn.prompt] == ["system", "user", "assistant", "user"]
    assert "Answer briefly." in contents[0]
    assert contents[1:] == ["First question", "First answer", "Second question"]


@pytest.mark.slow  # a real HTTP server
def test_stop_strings_cut_the_answer(server, keys):
    url = f"{server.url}/v1/chat/completions"
    full = httpx.post(url, headers=_h(keys["chat"]), json=_chat_body(max_tokens=16), timeout=30).json()
    text = full["choices"][0]["message"]["content"]
    if len(text) < 4:
        pytest.skip("the tiny model's answer is too short to cut")
    stop = text[2:4]
    cut = httpx.post(url, headers=_h(keys["chat"]), json=_chat_body(max_tokens=16, stop=stop), timeout=30).json()
    got = cut["choices"][0]["message"]["content"]
    assert stop not in got and text.startswith(got) and cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.slow
def test_concurrent_burst_all_succeed(server, keys):
    def one(i):
        return httpx.post(f"{server.url}/v1/chat/completions", headers=_h(keys["chat"]),
                          json=_chat_body(f"Hello {i}", max_tokens=4), timeout=120)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert [r.status_code for r in results] == [200] * 20
    assert len({r.json()["id"] for r in results}) == 20


# ------------------------------------------------------------------------------ errors
def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.slow  # a real HTTP server
def test_auth_errors(server, keys):
    url = f"{server.url}/v1/chat/completions"
    _error(httpx.post(url, json=_chat_body()), 401)
    _error(httpx.post(url, json=_chat_body(), headers=_h("pa-wrong")), 401)
    _error(httpx.get(f"{server.url}/v1/models", headers={"Authorization": keys["all"]}), 401)  # no Bearer
    err = _error(httpx.post(url, json=_chat_body(), headers=_h(keys["mem"])), 403)
    assert "chat" in err["message"]
    _error(httpx.post(f"{server.url}/v1/memories", json={"text": "x"}, headers=_h(keys["mem"])), 403)
    _error(httpx.get(f"{server.url}/v1/memories", headers=_h(keys["chat"])), 403)
    _error(httpx.post(f"{server.url}/v1/feedback", json={"completion_id": "x", "rating": 1}, headers=_h(keys["chat"])), 403)
    api_keys.revoke("chatonly")
    _error(httpx.post(url, json=_chat_body(), headers=_h(keys["chat"])), 401)


@pytest.mark.slow
def test_request_errors(server, keys):
    url = f"{server.url}/v1/chat/completions"
    h = _h(keys["all"])
    err = _error(httpx.post(url, json=_chat_body() | {"model": "astrology"}, headers=h), 404)
    assert err["code"] == "model_not_found"
    err = _error(httpx.post(url, content=b'{"model": "general", "messages": [', headers=h), 400)
    assert err["code"] == "invalid_json"
    _error(httpx.post(url, json=_chat_body() | {"messages": "hello"}, headers=h), 422)
    _error(httpx.post(url, json=_chat_body() | {"temperature": "hot"}, headers=h), 422)
    _error(httpx.post(url, json=_chat_body() | {"max_tokens": 0}, headers=h), 422)
    _error(httpx.post(url, json=_chat_body() | {"user": ""}, headers=h), 400)
    _error(httpx.post(url, json=_chat_body() | {"user": "a\nb"}, headers=h), 400)
    _error(httpx.post(url, json={"model": "general", "messages": [{"role": "assistant", "content": "hi"}]}, headers=h), 400)
    err = _error(httpx.post(url, json=_chat_body("word " * 2000), headers=h, timeout=30), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(httpx.post(url, json=_chat_body("word " * 2000, stream=True), headers=h, timeout=30), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(httpx.post(url, content=b"x" * 100_000, headers=h | {"Content-Type": "application/json"}), 413)
    assert err["code"] == "request_too_large"

    def chunked():  # no Content-Length: the size is counted as the body arrives
        for _ in range(10):
            yield b"x" * 10_000

    _error(httpx.post(url, content=chunked(), headers=h), 413)
    _error(httpx.get(f"{server.url}/v1/nothing", headers=h), 404)


# ------------------------------------------------------------------------------ memories and feedback
@pytest.mark.slow
def test_memories_endpoints(server, keys):
    base, h = f"{server.url}/v1/memories", _h(keys["all"])
    r = httpx.post(base, headers=h, json={"user": "bob", "text": "I am allergic to peanuts.", "kind": "fact"}, timeout=60)
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    httpx.post(base, headers=h, json={"user": "bob", "text": "I like green tea.", "kind": "preference"}, timeout=60)
    listed = httpx.get(base, headers=h, params={"user": "bob"}).json()["data"]
    assert {m["text"] for m in listed} == {"I am allergic to peanuts.", "I like green tea."}
    assert httpx.get(base, headers=h, params={"user": "carol"}).json()["data"] == []
    found = httpx.get(base, headers=h, params={"user": "bob", "q": "Which nuts should I avoid?"}).json()["data"]
    assert found[0]["id"] == mid and 0 <= found[0]["similarity"] <= 1
    _error(httpx.post(base, headers=h, json={"user": "bob", "text": "x", "kind": "secret"}), 422)
    _error(httpx.post(base, headers=h, json={"user": "bob", "text": 5}), 422)
    assert httpx.get(base, headers=_h(keys["mem"]), params={"user": "bob"}).status_code == 200
    _error(httpx.delete(f"{base}/{mid}", headers=_h(keys["mem"]), params={"user": "bob"}), 403)
    r = httpx.delete(f"{base}/{mid}", headers=h, params={"user": "bob"}, timeout=60)
    assert r.status_code == 200 and r.json()["deleted"] is True
    _error(httpx.delete(f"{base}/{mid}", headers=h, params={"user": "bob"}, timeout=60), 404)
    assert [m["text"] for m in httpx.get(base, headers=h, params={"user": "bob"}).json()["data"]] == ["I like green tea."]


@pytest.mark.slow
def test_chat_uses_memories_only_with_memory_scope(server, keys):
    h = _h(keys["all"])
    httpx.post(f"{server.url}/v1/memories", headers=h, json={"user": "dana", "text": "My dog is called Biscuit."}, timeout=60)
    body = _chat_body("What is my dog called?", user="dana", max_tokens=4)
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=h, json=body, timeout=180).json()
    assert any("Biscuit" in m["text"] for m in r["memories"])
    assert any(s["kind"] == "fact" and s["memory_id"] for s in r["sources"])
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=_h(keys["chat"]), json=body, timeout=180).json()
    assert "memories" not in r and "sources" not in r
    assert server.assistant.journal("dana").turn(r["turn_id"]).memory_ids == []


@pytest.mark.slow
def test_feedback_lands_in_journal(server, keys):
    h = _h(keys["all"])
    out = httpx.post(f"{server.url}/v1/chat/completions", headers=h, json=_chat_body(user="erin"), timeout=180).json()
    seen = []
    server.assistant.listeners.append(lambda user, pack: seen.append((user, pack)))
    r = httpx.post(f"{server.url}/v1/feedback", headers=h, json={"completion_id": out["id"], "rating": -1, "user": "erin"})
    assert r.status_code == 200, r.text
    bare = out["id"][len("chatcmpl-"):]
    r = httpx.post(f"{server.url}/v1/feedback", headers=h,
                   json={"completion_id": bare, "correction": "Hello! How can I help?", "user": "erin"})
    assert r.status_code == 200, r.text
    turn = server.assistant.journal("erin").turn(bare)
    assert turn.rating == -1 and turn.correction == "Hello! How can I help?"
    assert seen == [("erin", "general"), ("erin", "general")]
    _error(httpx.post(f"{server.url}/v1/feedback", headers=h, json={"completion_id": out["id"], "rating": 3, "user": "erin"}), 422)
    _error(httpx.post(f"{server.url}/v1/feedback", headers=h, json={"completion_id": out["id"], "user": "erin"}), 400)
    _error(httpx.post(f"{server.url}/v1/feedback", headers=h, json={"completion_id": "chatcmpl-nope", "rating": 1, "user": "erin"}), 404)
    # another user's journal does not hold it
    _error(httpx.post(f"{server.url}/v1/feedback", headers=h, json={"completion_id": out["id"], "rating": 1, "user": "frank"}), 404)


@pytest.mark.slow
def test_audit_log_has_no_message_text(server, keys):
    secret = "Zebra4471 is my secret phrase"
    httpx.post(f"{server.url}/v1/chat/completions", headers=_h(keys["chat"]), json=_chat_body(secret), timeout=30)
    httpx.post(f"{server.url}/v1/chat/completions", json=_chat_body(secret))
    httpx.get(f"{server.url}/v1/memories", headers=_h(keys["all"]), params={"user": "me", "q": secret}, timeout=60)
    deadline = time.monotonic() + 10  # the audit line is written as the response finishes
    while True:
        raw = (paths.api_dir() / "audit.log").read_text()
        if len(raw.splitlines()) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert "Zebra4471" not in raw
    entries = [json.loads(line) for line in raw.splitlines()]
    assert {"app", "endpoint", "method", "time", "status"} <= set(entries[0])
    assert [(e["app"], e["endpoint"], e["status"]) for e in entries] == [
        ("chatonly", "/v1/chat/completions", 200), (None, "/v1/chat/completions", 401), ("all", "/v1/memories", 200),
    ]


# ------------------------------------------------------------------------------ real model
@pytest.mark.real
def test_real_model_knows_the_capital_of_france(real_engine, home):
    from openai import OpenAI

    from api import make_app
    from assistant.core import Assistant

    key = api_keys.create("real", "chat", users="me")
    assistant = Assistant(settings_mod.load(env={}), engine=real_engine)
    with Server(make_app(assistant)) as srv:
        client = OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0, timeout=300)
        out = client.chat.completions.create(
            model="general", messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0, max_tokens=48,
        )
    assert "Paris" in out.choices[0].message.content
    assert out.usage.completion_tokens > 0


@pytest.mark.slow
def test_a_request_holds_the_federated_busy_marker_on_a_joined_device(home, tiny_engine, keys):
    """While the API generates, a SuperNode on this machine sees the busy marker (this process)."""
    import os

    pytest.importorskip("flwr")
    from api import make_app
    from assistant.core import Assistant
    from federated import config as config_mod
    from federated.idle import busy_marker

    config_mod.record_join("127.0.0.1:9092", "general", True, None, home)
    tiny_engine.context_tokens = 512
    seen: list[str] = []
    real_stream = tiny_engine.stream

    def spy(*a, **kw):
        seen.append(busy_marker(home).read_text() if busy_marker(home).exists() else "")
        return real_stream(*a, **kw)

    tiny_engine.stream = spy
    assistant = Assistant(_settings(), engine=tiny_engine)
    with Server(make_app(assistant)) as srv:
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=_chat_body(), headers=_h(keys["all"]), timeout=60)
        assert r.status_code == 200, r.text
        assert seen and seen[0] == str(os.getpid())
        assert not busy_marker(home).exists()


@pytest.mark.slow
def test_deep_json_and_lone_surrogates_are_answered_not_500(server, keys):
    """JSON nested 2,000 deep is a 400 that says why; a lone surrogate (a JSON escape such as
    \\ud800 that is no character) in a text field is replaced, and the request is answered."""
    h = _h(keys["all"]) | {"Content-Type": "application/json"}
    url = f"{server.url}/v1/chat/completions"
    deep = b'{"model": "general", "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    err = _error(httpx.post(url, content=deep, headers=h), 400)
    assert err["code"] == "invalid_json"
    body = b'{"model": "general", "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "hi \\ud800 there"}]}'
    r = httpx.post(url, content=body, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    turn = server.assistant.journal(r.json()["user"]).turn(r.json()["turn_id"])
    assert turn.message.startswith("hi ") and turn.message.endswith(" there") and "\ud800" not in turn.message
    r = httpx.post(f"{server.url}/v1/memories", content=b'{"text": "My code word is \\udcff kiwi."}', headers=h, timeout=60)
    assert r.status_code in (200, 201), r.text
    listed = httpx.get(f"{server.url}/v1/memories", headers=_h(keys["all"]), timeout=60).json()
    assert any("kiwi" in m["text"] for m in listed["data"])
