import json
import re

import pytest

from assistant import packs, safety
from assistant.errors import PackError
from tests.conftest import ROOT, copy_pack

BUILTIN = ["chef", "doctor", "lawyer"]


@pytest.mark.parametrize("name", BUILTIN + ["general"])
def test_builtin_packs_are_valid(name):
    root = ROOT / "data" / "packs" / name
    assert packs.validate(root) == []
    pack = packs.load(root)
    assert pack.id == name and pack.persona


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_packs_meet_the_content_minimums(name):
    pack = packs.load(ROOT / "data" / "packs" / name)
    assert len(pack.knowledge_files()) >= 25
    assert len(pack.train_examples()) >= 150
    assert len(pack.eval_probes()) >= 60


@pytest.mark.parametrize("name", BUILTIN)
def test_red_flags_fire_on_every_paraphrase_and_never_on_ordinary_questions(name):
    pack = packs.load(ROOT / "data" / "packs" / name)
    cases = pack.safety_cases()
    assert sum(1 for c in cases if c["flag"] is None) >= 15
    for case in cases:
        check = safety.before(pack, case["text"])
        expected = [case["flag"]] if case["flag"] else []
        assert check.flags == expected, case["text"]


def test_doctor_emergencies_replace_the_answer():
    pack = packs.load(ROOT / "data" / "packs" / "doctor")
    required = {"chest_pain", "stroke", "severe_bleeding", "breathing", "suicidal", "overdose", "anaphylaxis"}
    assert required <= {f.id for f in pack.red_flags}
    check = safety.before(pack, "my dad suddenly can't lift his arm and his speech is slurred")
    assert check.replace and re.search(r"\b(911|999|112|emergency)\b", check.replace)


def test_lawyer_notice_is_appended_by_code():
    pack = packs.load(ROOT / "data" / "packs" / "lawyer")
    assert pack.notice
    assert pack.notice in safety.after(pack, "A contract needs an offer and an acceptance.")


def test_chef_flags_declared_allergens_from_memory():
    pack = packs.load(ROOT / "data" / "packs" / "chef")
    tail = safety.after(pack, "Try a satay sauce made with peanuts.", ["I'm allergic to peanuts."])
    assert "peanuts" in tail and "allerg" in tail.lower()
    assert "Allergy" not in safety.after(pack, "Try a tomato sauce.", ["I'm allergic to peanuts."])
    assert "Allergy" not in safety.after(pack, "Peanut butter works.", ["I'm no longer allergic to peanuts."])


def test_validate_reports_every_problem_with_file_line_and_key(tmp_path):
    root = copy_pack("general", tmp_path)
    toml = (root / "pack.toml").read_text().replace("persona =", "persona_promt =")
    (root / "pack.toml").write_text(toml)
    lines = len((root / "train.jsonl").read_text().splitlines())
    with (root / "train.jsonl").open("a") as fh:
        fh.write("{not json\n")
        fh.write(json.dumps({"id": "general-train-001", "prompt": "x", "answer": "y"}) + "\n")
    for f in (root / "knowledge").iterdir():
        f.unlink()
    problems = [str(p) for p in packs.validate(root)]
    text = "\n".join(problems)
    assert "pack.toml line" in text and "persona_promt" in text and "unknown key" in text
    assert "`persona`: missing required field" in text
    assert re.search(rf"train.jsonl line {lines + 1}: not valid JSON", text)
    assert re.search(rf"train.jsonl line {lines + 2}: `id`: duplicate id", text)
    assert "knowledge: empty" in text
    with pytest.raises(PackError, match="persona_promt"):
        packs.load(root)


def test_scaffold_is_valid_and_install_makes_it_discoverable(tmp_path, home):
    root = packs.scaffold("gardener", tmp_path)
    assert packs.validate(root) == []
    packs.install(root)
    catalog = packs.discover()
    assert catalog.get("gardener").source == "user"
    with pytest.raises(PackError, match="already installed"):
        packs.install(root)


def test_a_broken_pack_is_reported_and_skipped(home):
    broken = home / "packs" / "broken"
    broken.mkdir(parents=True)
    (broken / "pack.toml").write_text("id = 'broken'\n")
    catalog = packs.discover()
    assert "chef" in catalog.packs and "broken" not in catalog.packs
    assert any("broken" in e for e in catalog.errors)
    with pytest.raises(PackError, match="no pack named 'nope'"):
        catalog.get("nope")


def test_a_pip_installed_pack_is_found_through_its_entry_point(tmp_path, home, monkeypatch):
    """A pack published as a package registers `assistant.packs = name = module:function`."""
    site = tmp_path / "site"
    pack_root = copy_pack("general", tmp_path / "payload")
    toml = (pack_root / "pack.toml").read_text().replace('id = "general"', 'id = "gardener"')
    (pack_root / "pack.toml").write_text(toml)
    (site / "gardener_pack").mkdir(parents=True)
    (site / "gardener_pack" / "__init__.py").write_text(f"def path():\n    return {str(pack_root)!r}\n")
    dist = site / "gardener_pack-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gardener-pack\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[assistant.packs]\ngardener = gardener_pack:path\n")
    monkeypatch.syspath_prepend(str(site))
    catalog = packs.discover()
    assert catalog.get("gardener").source.startswith("pip:")
    assert catalog.get("gardener").root == pack_root


def test_the_allergen_check_runs_only_in_packs_that_declare_it(tmp_path):
    """A pack rule lives in the pack: chef declares `checks = ["allergens"]`, general does not, and
    an unknown check name is a validation problem that names the known ones."""

    catalog = packs.discover()
    facts = ["I am allergic to peanuts."]
    answer = "Try a satay sauce with peanuts and lime."
    assert "Allergy warning" in safety.after(catalog.get("chef"), answer, facts)
    assert "Allergy warning" not in safety.after(catalog.get("general"), answer, facts)
    root = copy_pack("general", tmp_path)
    manifest = root / "pack.toml"
    manifest.write_text(manifest.read_text().replace("\n[", '\nchecks = ["allergies"]\n\n[', 1))
    problems = [str(p) for p in packs.validate(root)]
    assert any("unknown check 'allergies'" in p and "allergens" in p for p in problems), problems
