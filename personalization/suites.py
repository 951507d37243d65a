"""Benchmark suites: scripted users with sessions and probes (``data/bench/``), their validation,
and how a probe's answer is scored. Shipped: the benchmark (bench/), the federated simulation and
the tests share one definition of a suite and a probe.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Sequence

from assistant.errors import ConfigError

KINDS = ("fact", "preference", "update", "abstain", "leak", "style", "domain")
VARIANTS = ("base", "memory", "adapter", "memory+adapter")
FLAGS = {"base": (False, False), "memory": (True, False), "adapter": (False, True), "memory+adapter": (True, True)}
QUICK_USERS = 3
_TURN_KEYS = {"user", "assistant", "rating", "correction"}
_PROBE_KEYS = {"id", "kind", "ask", "expect_any", "expect_all", "forbid", "prefer", "over"}
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BenchError(ConfigError):
    """A suite file is wrong, or the run cannot go on."""


# ------------------------------------------------------------------------------ suites
def _fail(where: str, field_path: str, msg: str) -> None:
    raise BenchError(f"{where}: {field_path}: {msg}")


def _str_list(value: Any, where: str, fp: str) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        _fail(where, fp, "must be a non-empty list of non-empty strings")


def _check_fields(where: str, fp: str, obj: dict[str, Any], known: set[str], required: Sequence[str] = (),
                  optional_text: Sequence[str] = ()) -> None:
    """No unknown field; each required one (and each optional text one that is there) a non-empty string."""
    for key in obj:
        if key not in known:
            _fail(where, f"{fp}.{key}", f"unknown field (known: {', '.join(sorted(known))})")
    for key in (*required, *(k for k in optional_text if k in obj)):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            _fail(where, f"{fp}.{key}", "missing" if key not in obj else "must be a non-empty string")


def validate(data: Any, where: str) -> None:
    """Raise ``BenchError("<where>: <field>: <what is wrong>")`` at the first fault."""
    if not isinstance(data, dict):
        _fail(where, "(top level)", "must be an object with name, pack and users")
    for key in ("name", "pack"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            _fail(where, key, "missing" if key not in data else "must be a non-empty string")
    users = data.get("users")
    if not isinstance(users, list) or not users:
        _fail(where, "users", "must be a non-empty list")
    seen: set[str] = set()
    for i, user in enumerate(users):
        up = f"users[{i}]"
        if not isinstance(user, dict):
            _fail(where, up, "must be an object with id, sessions and probes")
        uid = user.get("id")
        if not isinstance(uid, str) or not _USER_RE.match(uid):
            _fail(where, f"{up}.id", f"invalid user id {uid!r} (1-64 letters, digits, '.', '_' or '-')")
        if uid in seen:
            _fail(where, f"{up}.id", f"duplicate user id {uid!r}")
        seen.add(uid)
        sessions = user.get("sessions")
        if not isinstance(sessions, list) or not sessions:
            _fail(where, f"{up}.sessions", "must be a non-empty list of sessions (lists of turns)")
        for s, session in enumerate(sessions):
            if not isinstance(session, list) or not session:
                _fail(where, f"{up}.sessions[{s}]", "must be a non-empty list of turns")
            for t, turn in enumerate(session):
                tp = f"{up}.sessions[{s}][{t}]"
                if not isinstance(turn, dict):
                    _fail(where, tp, "must be an object with at least 'user'")
                _check_fields(where, tp, turn, _TURN_KEYS, required=("user",), optional_text=("assistant", "correction"))
                if "rating" in turn and (isinstance(turn["rating"], bool) or turn["rating"] not in (1, -1)):
                    _fail(where, f"{tp}.rating", f"must be 1 or -1, not {turn['rating']!r}")
        probes = user.get("probes")
        if not isinstance(probes, list) or not probes:
            _fail(where, f"{up}.probes", "must be a non-empty list")
        for p, probe in enumerate(probes):
            pp = f"{up}.probes[{p}]"
            if not isinstance(probe, dict):
                _fail(where, pp, "must be an object with id, kind and ask")
            _check_fields(where, pp, probe, _PROBE_KEYS, required=("id", "kind", "ask"))
            if probe["kind"] not in KINDS:
                _fail(where, f"{pp}.kind", f"unknown kind {probe['kind']!r} (known: {', '.join(KINDS)})")
            for key in ("expect_any", "expect_all", "forbid"):
                if key in probe:
                    _str_list(probe[key], where, f"{pp}.{key}")
            if ("prefer" in probe) != ("over" in probe):
                _fail(where, f"{pp}.{'over' if 'prefer' in probe else 'prefer'}", "prefer and over go together")
            for key in ("prefer", "over"):
                if key in probe and (not isinstance(probe[key], str) or not probe[key].strip()):
                    _fail(where, f"{pp}.{key}", "must be a non-empty string")
            if probe["kind"] != "abstain" and not any(k in probe for k in ("expect_any", "expect_all", "forbid", "prefer")):
                _fail(where, pp, "has no check: give expect_any, expect_all, forbid or prefer/over")


def load_suite(path: str | Path) -> dict[str, Any]:
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"{where}: no such suite file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{where}: cannot read it: {exc}") from None
    except ValueError as exc:
        raise BenchError(f"{where}: (file): not valid JSON: {exc}") from None
    validate(data, where)
    return data


def load_suites(paths: Sequence[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """Load and validate every suite; user ids must be unique across them (they share a home)."""
    out: list[tuple[str, dict[str, Any]]] = []
    owner: dict[str, str] = {}
    names: set[str] = set()
    for path in paths:
        data = load_suite(path)
        if data["name"] in names:
            _fail(str(path), "name", f"duplicate suite name {data['name']!r}")
        names.add(data["name"])
        for i, user in enumerate(data["users"]):
            if user["id"] in owner:
                _fail(str(path), f"users[{i}].id", f"user id {user['id']!r} is also used in {owner[user['id']]}")
            owner[user["id"]] = str(path)
        out.append((str(path), data))
    return out


# ------------------------------------------------------------------------------ scoring
def score_probe(probe: dict[str, Any], answer: str, margin: float | None = None) -> dict[str, Any]:
    """Which checks of ``probe`` the ``answer`` passes; ``margin`` is prefer's lead over over
    (length-normalised log-likelihood), None when the probe has no prefer/over."""
    from personalization.evaluate import abstains, check

    checks: dict[str, bool] = {}
    forbid = probe.get("forbid", ())
    if probe["kind"] == "abstain":
        checks["abstain"] = abstains(answer) and check(answer, forbid=forbid)
    elif any(k in probe for k in ("expect_any", "expect_all", "forbid")):
        checks["keywords"] = check(answer, probe.get("expect_any", ()), probe.get("expect_all", ()), forbid)
    if "prefer" in probe:
        checks["prefer"] = margin is not None and margin > 0
    low = answer.lower()
    return {"passed": bool(checks) and all(checks.values()), "checks": checks,
            "forbid_hit": any(f.lower() in low for f in forbid)}


def bootstrap_ci(outcomes: Sequence[bool | int], seed: int = 0, n: int = 1000) -> list[float] | None:
    """95% percentile bootstrap interval of the mean of 0/1 ``outcomes`` (None when empty)."""
    if not outcomes:
        return None
    rng = random.Random(seed)
    values = [1.0 if o else 0.0 for o in outcomes]
    k = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(k)) / k for _ in range(n))
    lo = means[int(0.025 * (n - 1))]
    hi = means[int(round(0.975 * (n - 1)))]
    return [round(lo, 4), round(hi, 4)]


def secret_owner(user: dict[str, Any], strings: Sequence[str]) -> bool:
    """True when ``user``'s own sessions mention any of ``strings`` (so finding it is no leak)."""
    text = " ".join(t.get("user", "") + " " + t.get("correction", "") for s in user["sessions"] for t in s).lower()
    return any(s.lower() in text for s in strings)
