"""Keys bound to users: every endpoint x scope x own/other user; e-mail user ids; loopback hosts."""

from __future__ import annotations

import json

import httpx
import pytest
from test_api import Server, _settings

from api import is_loopback
from api import keys as api_keys
from assistant import paths
from cli.main import main as cli_main

OWN, OTHER = "alice", "bob"


def _requests(user: str) -> dict[str, tuple[str, str, dict]]:
    """endpoint -> (method, path, httpx keyword arguments) acting for ``user``."""
    chat = {"model": "general", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "user": user}
    return {
        "chat": ("POST", "/v1/chat/completions", {"json": chat}),
        "completions": ("POST", "/v1/completions", {"json": {"model": "general", "prompt": "Hi", "max_tokens": 2,
                                                             "user": user}}),
        "embeddings": ("POST", "/v1/embeddings", {"json": {"model": "all-MiniLM-L6-v2", "input": "hi", "user": user}}),
        "memories.list": ("GET", "/v1/memories", {"params": {"user": user}}),
        "memories.add": ("POST", "/v1/memories", {"json": {"text": "I like tea.", "user": user}}),
        "memories.delete": ("DELETE", "/v1/memories/m-none", {"params": {"user": user}}),
        "feedback": ("POST", "/v1/feedback", {"json": {"completion_id": "chatcmpl-none", "rating": 1, "user": user}}),
    }


NEEDS = {"chat": "chat", "completions": "chat", "embeddings": "chat", "memories.list": "memory:read",
         "memories.add": "memory:write", "memories.delete": "memory:write", "feedback": "feedback"}


@pytest.fixture
def server(tiny_engine, home):
    from api import make_app
    from assistant.core import Assistant

    tiny_engine.context_tokens = 512
    assistant = Assistant(_settings(max_body_bytes=64_000), engine=tiny_engine)
    with Server(make_app(assistant)) as srv:
        srv.assistant = assistant
        yield srv


@pytest.mark.slow
def test_key_matrix_other_user_is_403_and_audited(server):
    keys = {scope: api_keys.create(f"app-{scope.replace(':', '-')}", scope, users=OWN) for scope in api_keys.SCOPES}
    seen = []
    with httpx.Client(base_url=server.url, timeout=900) as client:
        for scope, key in keys.items():
            for user in (OWN, OTHER):
                for endpoint, (method, path, kw) in _requests(user).items():
                    r = client.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)
                    seen.append((scope, endpoint, user, r.status_code))
                    if NEEDS[endpoint] != scope:
                        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", (scope, endpoint)
                    elif user == OTHER:
                        assert r.status_code == 403, (scope, endpoint, r.text)
                        assert r.json()["error"]["code"] == "user_not_allowed" and "bob" in r.json()["error"]["message"]
                    else:  # own user: served (404 only for the made-up memory / completion ids)
                        assert r.status_code in (200, 201, 404), (scope, endpoint, r.text)
                        assert r.status_code != 404 or endpoint in ("memories.delete", "feedback")
    assert len(seen) == len(keys) * 2 * len(NEEDS)
    # nothing was written for bob
    assert not (paths.users_dir() / OTHER).exists()
    import time

    deadline = time.monotonic() + 10  # the audit line is written as the response finishes
    while True:
        audit = [json.loads(line) for line in (paths.api_dir() / "audit.log").read_text().splitlines()]
        denied = [e for e in audit if e.get("denied") == "user"]
        if len(denied) >= len(NEEDS) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(denied) == len(NEEDS), sorted(e["endpoint"] for e in denied)
    assert len(denied) == len(NEEDS) and all(e["user"] == OTHER and e["status"] == 403 for e in denied)


@pytest.mark.slow
def test_a_key_for_one_user_acts_for_it_by_default_and_sets_and_star(server):
    one = api_keys.create("one", "chat,memory:read", users="alice")
    both = api_keys.create("both", "memory:read", users=["alice", "carol@example.com"])
    star = api_keys.create("star", "memory:read", users="*")
    base = f"{server.url}/v1/memories"
    r = httpx.get(base, headers={"Authorization": f"Bearer {one}"}, timeout=300)
    assert r.status_code == 200 and r.json()["user"] == "alice"  # no user named: the key's one user
    mapped = api_keys.user_folder("carol@example.com")
    r = httpx.get(base, headers={"Authorization": f"Bearer {both}"}, params={"user": "carol@example.com"}, timeout=300)
    assert r.status_code == 200 and r.json()["user"] == mapped
    assert httpx.get(base, headers={"Authorization": f"Bearer {both}"}, params={"user": "dave"}, timeout=300).status_code == 403
    assert httpx.get(base, headers={"Authorization": f"Bearer {star}"}, params={"user": "dave"}, timeout=300).status_code == 200


@pytest.mark.slow  # a real HTTP server
def test_a_key_from_before_users_acts_only_for_the_default_user(server):
    key = api_keys.create("old", "memory:read", users="me")
    path = api_keys.keys_file()
    data = json.loads(path.read_text())
    del data["keys"][0]["users"]  # as written by the previous version
    path.write_text(json.dumps(data))
    h = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{server.url}/v1/memories", headers=h, timeout=300).status_code == 200
    assert httpx.get(f"{server.url}/v1/memories", headers=h, params={"user": "alice"}, timeout=300).status_code == 403


def test_user_ids_map_to_safe_stable_folder_names():
    f = api_keys.user_folder
    assert f("alice") == "alice" and f("Bob_2.x-y") == "Bob_2.x-y"
    mail = f("alice@example.com")
    assert mail.startswith("alice_at_example.com-") and mail == f("alice@example.com")
    assert mail != f("Alice@example.com") and mail != f("alice@example.org")
    for raw in ("../../etc", "..", ".", "a/b", "a\\b", " spaced name ", "émile@exämple.fr", "-x", "x" * 200):
        folder = f(raw)
        assert paths.check_user_name(folder) == folder and "/" not in folder and folder not in (".", "..")
    for bad in ("", "   ", "a\nb", "x" * 300):
        with pytest.raises(Exception, match="user id"):
            f(bad)


def test_cli_binds_keys_to_users_and_star_needs_confirmation(home, capsys):
    assert cli_main(["api-key", "create", "notes", "--user", "alice", "--user", "bob@example.com"]) == 0
    key = capsys.readouterr().out.strip()
    assert api_keys.find(key).users == ["alice", api_keys.user_folder("bob@example.com")]
    assert cli_main(["api-key", "create", "all", "--user", "*"]) == 2
    assert "--yes-every-user" in capsys.readouterr().err
    assert cli_main(["api-key", "create", "all", "--user", "*", "--yes-every-user"]) == 0
    assert api_keys.find(capsys.readouterr().out.strip()).users == ["*"]
    assert cli_main(["api-key", "create", "dflt"]) == 0  # default: the config's user
    assert api_keys.find(capsys.readouterr().out.strip()).users == ["me"]
    assert cli_main(["api-key", "list"]) == 0
    assert "users: alice," in capsys.readouterr().out


@pytest.mark.slow  # a real HTTP server
def test_no_endpoint_creates_or_widens_keys(server):
    key = api_keys.create("k", "chat,memory:read,memory:write,feedback", users="*")
    h = {"Authorization": f"Bearer {key}"}
    before = api_keys.keys_file().read_text()
    for path in ("/v1/keys", "/v1/api-keys", "/v1/api_keys", "/v1/admin/keys"):
        assert httpx.post(f"{server.url}{path}", headers=h, json={"name": "x", "scopes": "chat"}, timeout=300).status_code in (404, 405)
    assert api_keys.keys_file().read_text() == before


def test_loopback_accepts_only_literal_loopback_addresses():
    for ok in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(ok), ok
    for bad in ("127.evil.com", "127.0.0.1.nip.io", "127.example", "0.0.0.0", "::", "192.168.1.2", "", "localhost.",
                "localhost.evil.com", "::ffff:10.0.0.1"):
        assert not is_loopback(bad), bad


def test_serve_refuses_a_host_name_that_starts_with_127(home, capsys):
    assert cli_main(["serve", "--host", "127.attacker.example"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
