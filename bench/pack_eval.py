"""Pack eval as a user gets it: every eval probe asked through the chat (knowledge recall on),
beside the model alone (no memory, no notes), plus an audit of every number in the answers.

    python -m bench.pack_eval [--packs chef,doctor,lawyer] [--limit N] [--out FILE] [--pack-adapters]

``--pack-adapters`` gives the grounded side the packs' starting adapters, as a new user of the
machine gets them: those trained in the data directory the command runs in (``assistant pack
train``), else the ones the packs ship in ``adapter/``.

A number in an answer is *unsupported* when it appears in neither the notes the turn recalled,
the pack's safety rules and red-flag messages, nor the question. The goal is 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _support(pack: Any, probe: dict[str, Any], reply: Any) -> list[str]:
    out = [probe["ask"], pack.system_prompt()] + [f.message for f in pack.red_flags]
    return out + [m.text for m in reply.memories]


def run_pack(assistant: Any, pack_id: str, limit: int | None, max_tokens: int, alone: bool = True,
             pack_adapter: bool = False) -> dict[str, Any]:
    from assistant import grounding
    from personalization.evaluate import check

    pack = assistant.pack(pack_id)
    probes = pack.eval_probes()[:limit] if limit else pack.eval_probes()
    rows = []
    for probe in probes:
        row: dict[str, Any] = {"id": probe["id"], "ask": probe["ask"]}
        for variant, use_memory in (("grounded", True), ("model_alone", False))[: 2 if alone else 1]:
            chat = assistant.chat(f"eval-{pack_id}", pack_id, use_memory=use_memory,
                                  use_adapter=pack_adapter and use_memory, source="bench")
            reply = chat.send(probe["ask"], temperature=0, max_new_tokens=max_tokens, seed=0)
            answer = reply.collect()
            passed = check(answer, probe.get("expect_any", ()), probe.get("expect_all", ()), probe.get("forbid", ()))
            unsupported = sorted(grounding.stated_numbers(answer) - set().union(*(grounding.numbers(s) for s in _support(pack, probe, reply))))
            row[variant] = {"answer": answer, "passed": passed, "unsupported_numbers": unsupported,
                            "grounding": reply.grounding, "sources": [s.get("file", s["id"]) for s in reply.sources],
                            "adapter": reply.adapter}
        rows.append(row)
        alone_said = f" / alone {'pass' if row['model_alone']['passed'] else 'fail'}" if alone else ""
        print(f"  {probe['id']}: grounded {'pass' if row['grounded']['passed'] else 'FAIL'}{alone_said}", file=sys.stderr)

    if pack_adapter and rows and not any(r["grounded"]["adapter"] for r in rows):
        raise SystemExit(f"--pack-adapters: pack {pack_id} has no live pack adapter; run `assistant pack train {pack_id}`")
    n = len(rows)
    summary = {
        "n": n,
        "grounded_pass_rate": sum(r["grounded"]["passed"] for r in rows) / n if n else 0.0,
        "model_alone_pass_rate": sum(r["model_alone"]["passed"] for r in rows) / n if n and alone else float("nan"),
        "grounded_unsupported_numbers": sum(len(r["grounded"]["unsupported_numbers"]) for r in rows),
        "model_alone_unsupported_numbers": sum(len(r["model_alone"]["unsupported_numbers"]) for r in rows) if alone else None,
        "led_by_notes": sum(r["grounded"]["grounding"] == "notes" for r in rows),
    }
    return {"pack": pack_id, "summary": summary, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pack_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--packs", default="chef,doctor,lawyer")
    ap.add_argument("--limit", type=int, default=None, help="first N probes of each pack")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="write every answer as JSON here")
    ap.add_argument("--no-alone", action="store_true", help="skip the model-alone comparison (half the time)")
    ap.add_argument("--pack-adapters", action="store_true",
                    help="the grounded side uses the packs' starting adapters (this data directory's, else shipped)")
    args = ap.parse_args(argv)
    from assistant import paths, settings
    from assistant.core import Assistant

    models = paths.models_dir().resolve()
    trained = (paths.home() / "pack-adapters").resolve()
    home = Path(tempfile.mkdtemp(prefix="pack-eval-"))
    if models.is_dir():
        (home / "models").symlink_to(models, target_is_directory=True)
    if args.pack_adapters and trained.is_dir():  # else the ones the packs ship (their adapter/ folder)
        (home / "pack-adapters").symlink_to(trained, target_is_directory=True)
    os.environ["ASSISTANT_HOME"] = str(home)
    assistant = Assistant(settings.load())
    t0 = time.perf_counter()
    results = [run_pack(assistant, p.strip(), args.limit, args.max_tokens, alone=not args.no_alone,
                        pack_adapter=args.pack_adapters) for p in args.packs.split(",") if p.strip()]
    print(f"\nload average {os.getloadavg()[0]:.2f}; {time.perf_counter() - t0:.0f} s")
    print("| pack | n | grounded (as a user gets it) | model alone | unsupported numbers (grounded / alone) | led by notes |")
    print("|---|---|---|---|---|---|")
    for r in results:
        s = r["summary"]
        print(f"| {r['pack']} | {s['n']} | {s['grounded_pass_rate']:.0%} | {s['model_alone_pass_rate']:.0%} | "
              f"{s['grounded_unsupported_numbers']} / {s['model_alone_unsupported_numbers']} | {s['led_by_notes']} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
