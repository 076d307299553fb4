"""Check that the current tokenization path gives byte-identical results to a reference commit's.

    .venv/bin/python benchmarks/check_tokenize_equivalence.py            # 20,000 mini-world conversations + test corpora
    .venv/bin/python benchmarks/check_tokenize_equivalence.py --n 2000 --time

The reference is `harness/data/tokenize.py` as of --ref (default: the commit before the speed-ups), loaded from
git into a throwaway module; both run on the same conversations with the same tokenizer(s), and every field of
every `Tokenized` (ids, segments, turns, offsets, text, roles, boundary, truncation, no_eot_turns) and the
prompt_masked labels/weights must be equal. Benchmark-only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, mini_world_conversations, train_tokenizer  # noqa: E402

REF = "0941024"


def ref_module(ref: str):
    src = subprocess.run(["git", "show", f"{ref}:harness/data/tokenize.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("ref_tokenize")
    mod.__dict__["__name__"] = "ref_tokenize"
    sys.modules["ref_tokenize"] = mod
    exec(compile(src, "ref_tokenize.py", "exec"), mod.__dict__)
    return mod


def same(a, b) -> str | None:
    import numpy as np

    if (a is None) != (b is None):
        return "one is None"
    if a is None:
        return None
    for f in ("input_ids", "segments", "turns", "offsets"):
        x, y = getattr(a, f), getattr(b, f)
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
            return f
    for f in ("text", "roles", "source", "truncated", "boundary", "no_eot_turns"):
        if getattr(a, f) != getattr(b, f):
            return f
    from harness.masking import apply_regime
    for kw in ({}, {"turns": "all"}):
        ma, mb = apply_regime(a, "prompt_masked", **kw), apply_regime(b, "prompt_masked", **kw)
        if not (np.array_equal(ma.labels, mb.labels) and np.array_equal(ma.weights, mb.weights)):
            return "labels"
    return None


def compare(ref, convs, tok, label, chunk=1024, **kw) -> int:
    from harness.data.tokenize import ConversationTokenizer

    new_ct, old_ct = ConversationTokenizer(tok, **kw), ref.ConversationTokenizer(tok, **kw)
    bad = 0
    for i in range(0, len(convs), chunk):
        part = convs[i:i + chunk]
        src = [f"ex{i + j}" for j in range(len(part))]
        outs = []
        for ct in (old_ct, new_ct):
            try:
                outs.append(("ok", ct(part, src)))
            except Exception as exc:  # noqa: BLE001 - errors must match too
                outs.append(("err", f"{type(exc).__name__}: {exc}"))
        (ka, a), (kb, b) = outs
        if ka != kb or (ka == "err" and a != b):
            bad += 1
            print(f"  {label}: chunk {i}: {ka} vs {kb}: {a if ka == 'err' else ''} / {b if kb == 'err' else ''}")
            continue
        if ka == "ok":
            for j, (x, y) in enumerate(zip(a, b)):
                d = same(x, y)
                if d:
                    bad += 1
                    if bad < 5:
                        print(f"  {label}: example {i + j} differs in {d}")
    print(f"{label}: {len(convs)} conversations, {bad} differ")
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--ref", default=REF)
    ap.add_argument("--time", action="store_true", help="also time old vs new (alternating, 2 rounds)")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    ref = ref_module(args.ref)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_tokenizer(root, mini_world_conversations(6000, seed=1))
        tok = AutoTokenizer.from_pretrained(root / "tokenizer")
        convs = [c["messages"] for c in mini_world_conversations(args.n, seed=0)]
        bad += compare(ref, convs, tok, "mini-world 20k (split, max_length 512)", max_length=512)
        bad += compare(ref, convs[:3000], tok, "mini-world (merge, left, 128)", boundary="merge", max_length=128,
                       truncation="left")
        bad += compare(ref, convs[:3000], tok, "mini-world (drop, 96)", max_length=96, truncation="drop")
        if args.time:
            import harness.data.tokenize as new

            for r in range(2):
                for name, mod in (("old", ref), ("new", new)):
                    ct = mod.ConversationTokenizer(tok, max_length=512)
                    t0 = time.perf_counter()
                    for i in range(0, len(convs), 1024):
                        ct(convs[i:i + 1024])
                    print(f"  round {r}: {name} {time.perf_counter() - t0:.2f} s")
    bad += test_corpora(ref)
    print("ALL IDENTICAL" if bad == 0 else f"{bad} DIFFERENCES")
    sys.exit(1 if bad else 0)


def test_corpora(ref) -> int:
    """The tests' tokenizers (tests/conftest.py) and corpora (tests/tiny.py, tests/data), several templates,
    edge cases (empty/whitespace contents, special tokens in contents) and policies."""
    sys.path.insert(0, str(ROOT))
    from harness.data import load_conversations
    from harness.data.templates import CHATML, PLAIN
    from tests import tiny
    from tests.conftest import train_bpe

    bad = 0
    toks = {"chatml": train_bpe(template=CHATML), "plain": train_bpe(template=PLAIN)}
    convs = [c["messages"] for c in tiny.conversations(60)]
    for p in sorted((ROOT / "tests" / "data").rglob("*.jsonl")):
        try:
            convs += [c.as_list() for c in load_conversations(str(p))]
        except Exception:  # noqa: BLE001 - deliberately broken fixtures
            pass
    convs += [
        [{"role": "user", "content": "  What is 2+2?  "}, {"role": "assistant", "content": " 4. "}],
        [{"role": "user", "content": "Hi <|im_end|> there"}, {"role": "assistant", "content": "<|im_end|>Paris."}],
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4.<|endoftext|>"}],
        [{"role": "system", "content": ""}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
        [{"role": "user", "content": "\ue0000\ue001"}, {"role": "assistant", "content": "Answer: 4."}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "tool", "content": "t"},
         {"role": "assistant", "content": "Assistant: Paris."}],
    ]
    trim = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | trim + '\\n' }}{% endfor %}"
    drop = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
            "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endif %}{% endfor %}")
    upper = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + eos_token }}{% endfor %}"
    for tname, tok in toks.items():
        for tmpl in (None, trim, drop, upper):
            for kw in ({}, {"boundary": "merge"}, {"max_length": 24, "truncation": "left"}):
                for chunk in (1, 7):
                    bad += compare(ref, convs, tok, f"tests: {tname} tmpl={'own' if tmpl is None else tmpl[:24]!r} "
                                   f"{kw} chunk {chunk}", chunk=chunk, chat_template=tmpl, **kw)
    return bad


if __name__ == "__main__":
    main()
