"""`harness world build --size test|demo|N [--out DIR] [--seed S] [--no-augment] [--pretrain]`;
`harness world reasoning WORLD_DIR [--out DIR]` (two-hop questions with reasoning traces);
`harness world ship WORLD_DIR` (ship a world's pretrained weights with harness, maintainers)."""

from __future__ import annotations

import argparse

from harness.commands import help_line


def _build(args: argparse.Namespace) -> int:
    from harness.world import build_world

    out = build_world(args.size, args.out, seed=args.seed, augment=not args.no_augment, pretrain_here=args.pretrain)
    print(f"world ready: {out}")
    return 0


def _ship(args: argparse.Namespace) -> int:
    from harness.world.prebuilt import INDEX, add

    entry = add(args.world)
    print(f"shipped {entry['file']} (sha256 {entry['sha256'][:12]}...), recorded in {INDEX}")
    return 0


def _reasoning(args: argparse.Namespace) -> int:
    from harness.world.reasoning import write_reasoning_data

    print(f"reasoning data ready: {write_reasoning_data(args.world, args.out)}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help=help_line("world"))
    wsub = p.add_subparsers(dest="world_command", metavar="ACTION")
    wsub.required = True
    b = wsub.add_parser("build", help="build (or reuse) a mini-world")
    b.add_argument("--size", default="test", help="test | demo | a number of people (default test)")
    b.add_argument("--out", default=None, help="output directory (default results/world/<size>-seed<S>)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-augment", action="store_true",
                   help="one fixed biography per person (Physics of LM 3.1: knowledge then is not extractable)")
    b.add_argument("--pretrain", action="store_true",
                   help="pretrain here even when harness ships this world's weights (harness/world/prebuilt.py)")
    b.set_defaults(func=_build)
    s = wsub.add_parser("ship", help="ship a world's pretrained weights with harness (harness/world/prebuilt.py)")
    s.add_argument("world", help="a world built with --pretrain, e.g. results/world/demo-seed0")
    s.set_defaults(func=_ship)
    r = wsub.add_parser("reasoning", help="two-hop questions with reasoning traces over a built world")
    r.add_argument("world", help="a built world directory, e.g. results/world/demo-seed0")
    r.add_argument("--out", default=None, help="output directory (default results/reasoning/<world name>)")
    r.set_defaults(func=_reasoning)
