"""Precision and recall of the memory extractor on the labelled set in ``data/memory/``.

    python -m bench.extraction [--show-errors]

A message counts as a true positive when the extractor stores something for a message labelled
fact or preference, with the labelled kind, containing every key term.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from assistant.paths import repo_data_dir
from memory.extract import extract

SETS = {"tuning": "extraction_set.jsonl", "heldout": "extraction_heldout.jsonl"}


def evaluate(show_errors: bool = False, which: str = "tuning") -> dict[str, Any]:
    rows = [json.loads(line) for line in (repo_data_dir() / "memory" / SETS[which]).open() if line.strip()]
    tp = fp = fn = 0
    op_right: Counter[bool] = Counter()
    errors: list[str] = []
    for row in rows:
        got = extract(row["text"])
        positive = row["label"] != "none"
        if not got:
            if positive:
                fn += 1
                errors.append(f"MISS  [{row['label']}/{row['op']}] {row['text']}")
            continue
        if not positive:
            fp += 1
            errors.append(f"FALSE [{got[0].kind}/{got[0].op}] {row['text']}")
            continue
        joined = " ".join(g.text for g in got).lower()
        kind_ok = any(g.kind == row["label"] for g in got)
        terms_ok = all(t.lower() in joined for t in row["key_terms"])
        if kind_ok and terms_ok:
            tp += 1
            op_right[got[0].op == row["op"]] += 1
        else:
            fp += 1
            fn += 1
            errors.append(f"WRONG [{got[0].kind}/{got[0].op} vs {row['label']}/{row['op']}] {row['text']}")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    if show_errors:
        print("\n".join(errors))
    return {
        "set": which, "messages": len(rows), "positives": sum(r["label"] != "none" for r in rows), "tp": tp, "fp": fp, "fn": fn,
        "precision": round(precision, 3), "recall": round(recall, 3),
        "op_accuracy": round(op_right[True] / max(1, sum(op_right.values())), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-errors", action="store_true")
    args = parser.parse_args()
    for which in SETS:
        print(f"{which} set ({SETS[which]}; the rules were written against the tuning set, the held-out set was written blind to them):")
        print(json.dumps(evaluate(args.show_errors, which), indent=2))


if __name__ == "__main__":
    main()
