"""Names that stay inside: no command, with any user or pack name, writes or deletes outside the
data directory; broken packs are skipped; pathological packs get clear problems, never a hang."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from assistant import packs, paths
from assistant import settings as settings_mod
from assistant.errors import UnsafeNameError
from cli.main import main

TRAVERSAL = [
    "../x", "../../x", "../../../../x", "a/b", "a/../../x", "/abs", ".", "..", "", " ", "x\x00y", "x" * 65,
    "x" * 4000, "a\nb", "-rf", ".hidden", "ümlaut", "a\\b", "~", "x/", "./x", "..\\x", "CON/x", "%2e%2e",
]


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, float]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            continue
        for name in dirnames + filenames:
            p = d / name
            if p == skip:
                continue
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime)
    return out


@pytest.fixture
def deep_home(tmp_path, monkeypatch):
    """The data directory four levels down, with bait folders wherever a traversal could land."""
    h = tmp_path / "a" / "b" / "c" / "home"
    h.mkdir(parents=True)
    monkeypatch.setenv("ASSISTANT_HOME", str(h))
    for base in (tmp_path, tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c", h.parent):
        for name in ("x", "abs", "b"):
            (base / name / "v0001").mkdir(parents=True, exist_ok=True)
            (base / name / "v0001" / "adapter_model.safetensors").write_bytes(b"bait")
            (base / name / "CURRENT").write_text("v0001")
    # A real user and pack inside, so commands get past "no such user" where they can.
    (h / "users" / "alice" / "adapters" / "general").mkdir(parents=True)
    return h


# Every command runs with these (the rule itself is checked with all of TRAVERSAL below).
COMMAND_NAMES = ["../x", "../../../../x", "a/b", ".", "..", "", "x\x00y", "x" * 4000, "a\nb", "-rf"]


def _commands(name: str, outside: Path) -> list[list[str]]:
    return [
        ["adapters", "list", "--user", name], ["adapters", "list", "--pack", name],
        ["adapters", "show", "--user", name, "--pack", name],
        ["adapters", "rollback", "none", "--user", name], ["adapters", "rollback", "--pack", name],
        ["adapters", "prune", "--keep", "0", "--pack", name], ["adapters", "prune", "--keep", "0", "--user", name],
        ["learn", "--status", "--user", name], ["learn", "--status", "--pack", name],
        ["memory", "list", "--user", name], ["memory", "forget", "--all", "--yes", "--user", name],
        ["memory", "add", "hello", "--user", name], ["user", "delete", name, "--yes"],
        ["pack", "new", name, "--dir", str(outside)], ["pack", "train", name],
        ["info", "--user", name], ["ask", "hi", "--user", name], ["ask", "hi", "--pack", name],
    ]


@pytest.mark.slow
def test_no_command_writes_or_deletes_outside_the_data_dir(deep_home, tmp_path, capsys, monkeypatch):
    from assistant import engine

    def refuse(*_a, **_k):  # a bad name must be refused before any model is loaded
        raise AssertionError("a command with a bad name reached the model")

    monkeypatch.setattr(engine.Engine, "load", staticmethod(refuse))
    outside = tmp_path / "scaffolds"
    outside.mkdir()
    before = _snapshot(tmp_path, deep_home)
    accepted = []
    for name in COMMAND_NAMES + [str(tmp_path / "a" / "x")]:
        for argv in _commands(name, outside):
            try:
                code = main(argv)  # an error is a return code: a traceback would fail the test here
            except SystemExit as exc:  # argparse refusing "-rf" as a value
                code = exc.code
            if code == 0 and argv[0] != "pack":
                accepted.append((name, argv))
    after = _snapshot(tmp_path, deep_home)
    assert after == before, "a command changed something outside the data directory"
    assert accepted == []
    err = capsys.readouterr().err
    assert "invalid user name" in err and "invalid pack name" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", TRAVERSAL)
def test_one_rule_for_user_and_pack_names(name):
    with pytest.raises(UnsafeNameError):
        paths.check_user_name(name)
    with pytest.raises(UnsafeNameError):
        paths.check_pack_name(name)


def test_inside_home_refuses_links_and_dots_out(home, tmp_path):
    (home / "users").mkdir()
    (home / "users" / "evil").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UnsafeNameError):
        paths.inside_home(home / "users" / "evil" / "x")
    with pytest.raises(UnsafeNameError):
        paths.inside_home(home / ".." / "x")
    assert paths.inside_home(home / "users" / "ok") == (home / "users" / "ok").resolve()


def _pack(tmp_path: Path, name: str = "mypack") -> Path:
    return packs.scaffold(name, tmp_path)


def test_broken_user_pack_is_skipped_with_a_warning(home, tmp_path, capsys):
    root = _pack(tmp_path)
    (root / "pack.toml").write_text((root / "pack.toml").read_text() +
                                    '\n[[red_flags]]\nid = "x"\npatterns = "abc"\nmessage = 5\n')
    target = home / "packs" / "mypack"
    target.parent.mkdir(parents=True)
    os.rename(root, target)
    (home / "packs" / "notapack").mkdir()
    assert main(["pack", "list"]) == 0
    out = capsys.readouterr().out
    assert "general" in out and "broken:" in out and "mypack" in out
    catalog = packs.discover()
    assert catalog.get("general").id == "general"


BAD_MANIFEST_TAILS = {
    "patterns is a string": '[[red_flags]]\nid = "x"\npatterns = "abc"\nmessage = "m"\n',
    "message is a number": '[[red_flags]]\nid = "x"\npatterns = ["abc"]\nmessage = 5\n',
    "empty patterns": '[[red_flags]]\nid = "x"\npatterns = []\nmessage = "m"\n',
    "pattern is a number": '[[red_flags]]\nid = "x"\npatterns = [5]\nmessage = "m"\n',
    "nested quantifier": '[[red_flags]]\nid = "x"\npatterns = ["(a+)+$"]\nmessage = "m"\n',
    "backtracking alternation": '[[red_flags]]\nid = "x"\npatterns = ["^(a|aa)+$"]\nmessage = "m"\n',
    "red_flags not tables": 'red_flags = [1, 2]\n',
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFEST_TAILS))
@pytest.mark.slow
def test_bad_manifests_get_problems_not_tracebacks_or_hangs(tmp_path, case):
    root = _pack(tmp_path)
    text = (root / "pack.toml").read_text()
    if case == "red_flags not tables":
        text = BAD_MANIFEST_TAILS[case] + text
    else:
        text += "\n" + BAD_MANIFEST_TAILS[case]
    (root / "pack.toml").write_text(text)
    (root / "safety_cases.jsonl").write_text('{"text": "' + "a" * 3000 + '!", "flag": "x"}\n')
    t0 = time.perf_counter()
    problems = packs.validate(root)
    assert time.perf_counter() - t0 < 10
    assert problems, f"{case}: called valid"
    assert main(["pack", "validate", str(root)]) == 1


@pytest.mark.parametrize("body", [
    '{"id": "e1", "ask": "q", "expect_any": [1, 2]}',
    '{"id": "e1", "ask": "q", "expect_any": ["a"], "answer": 5}',
    '{"id": ["e1"], "ask": "q", "expect_any": ["a"]}',
])
def test_bad_eval_lines_are_problems(tmp_path, body):
    root = _pack(tmp_path)
    (root / "eval.jsonl").write_text(body + "\n")
    assert packs.validate(root)


def test_bad_generation_values_are_problems(tmp_path):
    root = _pack(tmp_path)
    text = (root / "pack.toml").read_text().replace("temperature = 0.7", "temperature = -1").replace("top_p = 0.9", "top_p = 0")
    (root / "pack.toml").write_text(text)
    keys = {p.key for p in packs.validate(root)}
    assert {"generation.temperature", "generation.top_p"} <= keys


def test_a_folder_where_a_file_should_be_is_a_problem(tmp_path):
    root = _pack(tmp_path)
    (root / "train.jsonl").unlink()
    (root / "train.jsonl").mkdir()
    (root / "knowledge" / "dir.md").mkdir()
    problems = [str(p) for p in packs.validate(root)]
    assert any("train.jsonl" in p and "not a file" in p for p in problems)


def test_the_live_adapter_pointer_is_private_whatever_the_umask(home, tiny_tokenizer):
    """CURRENT (which version is live) is created 0600 even by a process that never set its umask."""
    import os
    import stat

    from assistant.adapters import CURRENT, AdapterStore
    from personalization import trainer
    from tests.conftest import make_tiny_model

    old = os.umask(0o022)
    try:
        store = AdapterStore("ann", "general")
        model = trainer.create(make_tiny_model(tiny_tokenizer), settings_mod.load(env={}).learning)
        staged = store.staging_dir()
        model.save_pretrained(str(staged))
        store.publish(staged, {"gate": {}})
    finally:
        os.umask(old)
    assert stat.S_IMODE((store.root / CURRENT).stat().st_mode) == 0o600
