"""Mask audit: see exactly which tokens each regime trains on, before spending compute.

``harness inspect (EXP.yaml | --data FILE --tokenizer DIR) [--regime R ...] [--n N] [--html OUT] [--json OUT]``

* terminal: N examples, each regime side by side, tokens coloured by segment, in-loss tokens bold and
  underlined (out-of-loss tokens dim), then per-regime statistics (supervised tokens, fraction, drops and
  why, boundary handling, mask hash);
* ``--html``: a self-contained page like the seed chapter's visualiser (switch regime, see the mask);
* ``--json``: per example ``input_ids``, ``tokens``, ``segments``, ``turns`` and per regime ``labels`` and
  ``weights`` (under ``multiturn: per_turn`` also the ``example`` that regime trains), plus the statistics.

Regimes are written ``name`` or ``name:option=value,...`` (``prompt_weight:prompt_weight=0.1``,
``prompt_masked:turns=last``). From an experiment file, the default is every distinct regime of its grid.
"""

from __future__ import annotations

import argparse
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.commands import help_line
from harness.data import ConversationTokenizer, load_conversations, per_turn, tokenize_all
from harness.data.prepare import Drops
from harness.data.templates import resolve_template
from harness.data.tokenize import Segment, Tokenized
from harness.errors import ConfigError
from harness.grid import load_experiment
from harness.masking import Masked, MaskedData, apply_all, regime_options, required_options
from harness.modeling import load_tokenizer, tokenizer_for
from harness.parity import Parity, check_parity
from harness.training.packing import plan_steps
from harness.training.replay import add_replay

SEGMENT_NAMES = {s.value: s.name.lower() for s in Segment}
# colour-blind-safe palette (Okabe-Ito), the same in the terminal, HTML and figures
SEGMENT_COLOURS = {
    Segment.TEMPLATE: "#999999", Segment.SYSTEM: "#CC79A7", Segment.USER: "#0072B2",
    Segment.ASSISTANT: "#009E73", Segment.EOT: "#E69F00", Segment.TOOL: "#56B4E9", Segment.REPLAY: "#F0E442",
    Segment.TOOL_CALL: "#D55E00", Segment.REASONING: "#8FD3B6", Segment.EMPTY_REASONING: "#DDDDDD",
}
# per-regime statistics of agentic data printed under the table (harness.masking.agentic_stats)
AGENTIC_KEYS = ("tool_call_tokens", "reasoning_tokens", "empty_reasoning_tokens", "reasoning_dropped_turns",
                "reasoning_inlined_turns", "messages_with_data_weight", "ignored_fields")


@dataclass
class RegimeSpec:
    name: str
    options: dict

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.options.items())


def parse_regime(text: str) -> RegimeSpec:
    """'prompt_weight:prompt_weight=0.1,turns=last' -> RegimeSpec."""
    name, _, rest = text.partition(":")
    opts: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        if "=" not in part:
            raise ConfigError(f"regime option {part!r} has no '='", where=f"--regime {text}",
                              fix="write name:option=value, e.g. prompt_weight:prompt_weight=0.1")
        k, v = part.split("=", 1)
        opts[k.strip()] = yaml.safe_load(v)
    required_options(name, opts)
    return RegimeSpec(name, opts)


@dataclass
class Audit:
    """Everything `harness inspect` shows: the examples (tokenized once) and each regime's masks."""

    tokenizer: Any
    examples: list[Tokenized]
    tokenize_drops: Drops
    regimes: list[RegimeSpec]
    masked: list[MaskedData]
    source: str
    replay: list[dict | None] = field(default_factory=list)  # per regime: what data.replay adds to the steps
    parity: list[Parity] = field(default_factory=list)  # per regime: trained turns vs the inference render

    def stats(self) -> list[dict]:
        extra = self.replay or [None] * len(self.regimes)
        return [{**m.stats(), "regime": r.label, **({"replay": x} if x else {})}
                for r, m, x in zip(self.regimes, self.masked, extra)]


def audit(conversations, tokenizer, regimes: list[RegimeSpec], *, max_length: int | None = None,
          truncation: str = "right", boundary: str = "split", chat_template: str | None = None,
          eot: str | None = None, source: str = "", literal_content: bool = True, template_name: str = "") -> Audit:
    ct = ConversationTokenizer(tokenizer, chat_template=chat_template, eot=eot, boundary=boundary,
                               max_length=max_length, truncation=truncation, literal_content=literal_content)
    examples, drops = tokenize_all(conversations, ct)
    turn_examples = None  # regime.multiturn: per_turn regimes train one example per assistant turn
    masked = []
    for r in regimes:
        if r.options.get("multiturn") == "per_turn":
            turn_examples = turn_examples or tokenize_all(per_turn(conversations), ct)
            masked.append(apply_all(turn_examples[0], r.name, r.options, turn_examples[1]))
        else:
            masked.append(apply_all(examples, r.name, r.options, drops))
    parity = [check_parity(conversations, ct, r.name, r.options, template=template_name) for r in regimes]
    return Audit(tokenizer, examples, drops, regimes, masked, source, parity=parity)


def _token_strings(tok, t: Tokenized) -> list[str]:
    return [t.text[s:e] if e > s else tok.convert_ids_to_tokens(int(i))
            for (s, e), i in zip(t.offsets.tolist(), t.input_ids.tolist())]


def _weights_for(a: Audit, k: int, example_index: int):
    """Weights of example `example_index` (index into a.examples) under regime k, or None if dropped."""
    return _shown(a, k, example_index)[1]


def _shown(a: Audit, k: int, example_index: int) -> tuple[Tokenized, Masked | None]:
    """The example regime k trains for conversation `example_index` and its mask (None if dropped): the
    conversation itself, or under multiturn: per_turn its last turn's example."""
    t = a.examples[example_index]
    md = a.masked[k]
    if a.regimes[k].options.get("multiturn") == "per_turn":
        mine = [(ex, m) for ex, m in zip(md.examples, md.masks) if ex.source.rpartition("#turn")[0] == t.source]
        return mine[-1] if mine else (t, None)
    for ex, m in zip(md.examples, md.masks):
        if ex is t:
            return ex, m
    return t, None


# ----------------------------------------------------------------------------------------------- terminal


# Off a terminal (a pipe, a file) colours and bold are gone: the loss is marked in the text itself
IN_LOSS, WEIGHTED = ("\u00ab", "\u00bb"), ("\u2039", "\u203a")  # «in the loss», ‹in it with a weight below 1›


def _marked(toks: list[str], weights: list[float]) -> str:
    """The tokens as plain text, each run of in-loss tokens between « », of down-weighted ones between ‹ ›."""
    out, open_ = [], None
    for s, w in zip(toks, weights):
        kind = IN_LOSS if w >= 1 else WEIGHTED if w > 0 else None
        if kind != open_:
            out += [open_[1] if open_ else "", kind[0] if kind else ""]
            open_ = kind
        out.append(s.replace("\n", "\u23ce\n"))
    return "".join(out) + (open_[1] if open_ else "")


def render_terminal(a: Audit, n: int, console=None) -> None:
    """N examples under each regime and the mask statistics. In a terminal: colours, in-loss tokens bold and
    underlined, regimes side by side; in a pipe or a file: in-loss tokens between markers (« », ‹ › for a weight
    below 1), regimes one under the other, long lines and table cells wrapped, never cut."""
    import os

    from rich.columns import Columns
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    plain = not console.is_terminal
    if plain and console.width <= 80:  # rich's default off a terminal; COLUMNS still wins when set
        console.width = int(os.environ.get("COLUMNS") or 120)
    legend = Text("segments: ")
    for seg, colour in SEGMENT_COLOURS.items():
        legend.append(f" {seg.name.lower()} ", style=f"black on {colour}")
        legend.append(" ")
    if plain:
        legend = Text(f"in the loss: {IN_LOSS[0]}...{IN_LOSS[1]}, with a weight below 1: {WEIGHTED[0]}...{WEIGHTED[1]}"
                      ", not in the loss: unmarked")
    for part, style in () if plain else (("   in loss: ", ""), ("bold underlined", "bold underline"), (" (weight < 1: ", ""),
                                         ("underlined", "underline"), ("), not in loss: ", ""), ("dim", "dim")):
        legend.append(part, style=style)
    console.print(legend)
    for i, t in enumerate(a.examples[:n]):
        panels = []
        for k, r in enumerate(a.regimes):
            shown, m = _shown(a, k, i)
            toks = _token_strings(a.tokenizer, shown)
            weights = [0.0] * len(toks) if m is None else [float(w) for w in m.weights]
            text = Text()
            if plain:
                text.append(_marked(toks, weights))
            for j, (s, seg) in enumerate(zip(toks, shown.segments.tolist()) if not plain else ()):
                style = f"{SEGMENT_COLOURS[Segment(seg)]}"
                style += " bold underline" if weights[j] >= 1 else " underline" if weights[j] > 0 else " dim"
                text.append(s.replace("\n", "⏎\n"), style=style)
            n_sup = 0 if m is None else m.n_supervised
            title = f"{r.label}: {n_sup}/{len(shown)} in loss" + (" [DROPPED]" if m is None else "")
            panels.append(Panel(text, title=title, expand=True))
        console.print(f"[bold]example {i}[/bold] ({t.source}, {len(t)} tokens, boundary={t.boundary})")
        for row in (panels if plain else [Columns(panels, equal=True, expand=True)]):
            console.print(row)
    table = Table(title=f"mask statistics ({a.source}: {len(a.examples) + a.tokenize_drops.total} examples)")
    for col in ("regime", "examples", "dropped", "tokens", "supervised", "weight sum", "fraction", "truncated",
                "no-EOT turns", "spell specials", "mask hash"):
        table.add_column(col, justify="right" if col not in ("regime", "mask hash") else "left")
    for s in a.stats():
        table.add_row(s["regime"], str(s["examples"]), str(s["dropped"]), str(s["tokens"]),
                      str(s["supervised_tokens"]), f"{s['weight_sum']:g}", f"{s['supervised_fraction']:.3f}", str(s["truncated_examples"]),
                      str(s["turns_without_eot"]), str(s["contents_spelling_special_tokens"]), s["mask_hash"])
    wrap_at = console.width  # off a terminal the table is as wide as its cells: a cut or folded cell misleads
    natural = console.measure(table, options=console.options.update_width(10**4)).maximum
    console.width = max(wrap_at, natural) if plain else wrap_at
    console.print(table)
    console.width = wrap_at
    for r, md in zip(a.regimes, a.masked):
        if md.drops.total:
            console.print(f"[yellow]{r.label}: dropped {md.drops.describe()}[/yellow]")
    for s in a.stats():
        if s.get("replay"):
            x = s["replay"]
            console.print(f"{s['regime']}: replay {x['tokens']} tokens in {x['pieces']} pieces, {x['share']:.2%} of "
                          f"the run's tokens (per step {x['step_share_min']:.2%}-{x['step_share_max']:.2%})")
    for r, s, p in zip(a.regimes, a.stats(), a.parity):
        extra = {k: v for k, v in s.items() if k in AGENTIC_KEYS}
        if extra:
            console.print(f"{r.label}: {extra}")
        console.print(f"{'' if p.ok else '[red]'}parity {r.label}: {p.describe()}{'' if p.ok else '[/red]'}")
    boundary = a.masked[0].stats()["boundary"] if a.masked else {}
    console.print(f"response boundaries: {boundary} (split = tokenized at the boundary as at inference)")
    spelled = max((s["contents_spelling_special_tokens"] for s in a.stats()), default=0)
    if spelled:
        console.print(f"[yellow]{spelled} message contents spell a special token of the tokenizer: tokenized as "
                      "text (set data.literal_content: false if the data means them as control tokens)[/yellow]")
    if any(s["turns_without_eot"] for s in a.stats()):
        console.print("[red]warning: some assistant turns have no end-of-turn marker: the model will never "
                      "learn to stop. Set data.eot or use a template that ends turns with eos.[/red]")


# ----------------------------------------------------------------------------------------------- json / html


def _example_json(a: Audit, t: Tokenized) -> dict:
    return {"source": t.source, "input_ids": t.input_ids.tolist(), "tokens": _token_strings(a.tokenizer, t),
            "segments": [SEGMENT_NAMES[s] for s in t.segments.tolist()], "turns": t.turns.tolist()}


def to_json(a: Audit, n: int | None = None) -> dict:
    out_examples = []
    for i, t in enumerate(a.examples[: n if n is not None else len(a.examples)]):
        ex: dict[str, Any] = {**_example_json(a, t), "boundary": t.boundary, "truncated": t.truncated, "regimes": {}}
        for k, r in enumerate(a.regimes):
            shown, m = _shown(a, k, i)
            ex["regimes"][r.label] = None if m is None else {
                "labels": m.labels.tolist(), "weights": [round(float(w), 6) for w in m.weights],
                **({} if shown is t else {"example": _example_json(a, shown)})}
        out_examples.append(ex)
    return {"source": a.source, "segment_colours": {SEGMENT_NAMES[s.value]: c for s, c in SEGMENT_COLOURS.items()},
            "stats": a.stats(), "examples": out_examples,
            "parity": [{"regime": r.label, "template": p.template, "turns_checked": p.turns_checked,
                        "mismatches": p.mismatches, "issues": [i.describe() for i in p.issues]}
                       for r, p in zip(a.regimes, a.parity)]}


_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>harness mask audit</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
.tok{font-family:ui-monospace,monospace;white-space:pre-wrap;padding:1px 0;border-radius:3px;
     border-bottom:3px solid transparent;opacity:.35}
.tok.in{opacity:1;border-bottom-color:#000;font-weight:600}
.ex{border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0}
.ex h3{margin:0 0 .5em 0;font-size:1em}
.meta{color:#666;font-size:.9em}
button{margin:0 .3em .3em 0;padding:.3em .8em;border:1px solid #888;border-radius:4px;background:#fff;cursor:pointer}
button.active{background:#222;color:#fff}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
.legend span{display:inline-block;padding:.1em .5em;margin-right:.4em;border-radius:3px;color:#000}
</style></head><body>
<h1>Mask audit</h1>
<p class="meta">__SOURCE__</p>
<div class="legend">__LEGEND__ &nbsp; bold + underlined = in the loss; faded = context only</div>
<h2>Statistics per regime</h2>
__TABLE__
<h2>Examples</h2>
<div id="buttons"></div>
<div id="examples"></div>
<script>
const DATA = __DATA__;
let current = Object.keys(DATA.examples[0]?.regimes || {})[0];
function draw(){
  const root = document.getElementById('examples'); root.innerHTML='';
  DATA.examples.forEach((ex,i)=>{
    const m = ex.regimes[current]; const div=document.createElement('div'); div.className='ex';
    const nsup = m ? m.weights.filter(w=>w>0).length : 0;
    const x = (m && m.example) || ex;  // a per_turn regime trains its own example (the conversation's last turn)
    let loss = m ? `${nsup} / ${x.tokens.length} tokens in loss` : 'DROPPED under this regime';
    div.innerHTML = `<h3>example ${i} <span class="meta">${ex.source} &middot; ${loss} &middot; boundary ${ex.boundary}</span></h3>`;
    const p=document.createElement('div');
    x.tokens.forEach((t,j)=>{const s=document.createElement('span'); const w=m?m.weights[j]:0;
      s.className='tok'+(w>0?' in':''); s.style.background=DATA.segment_colours[x.segments[j]];
      if(w>0&&w<1){s.style.opacity=0.35+0.65*w;}
      s.title=`${x.segments[j]} | turn ${x.turns[j]} | id ${x.input_ids[j]} | weight ${w}`;
      s.textContent=t.replace(/\\n/g,'⏎\\n'); p.appendChild(s);});
    div.appendChild(p); root.appendChild(div);});
  document.querySelectorAll('#buttons button').forEach(b=>b.classList.toggle('active', b.textContent===current));
}
const bs=document.getElementById('buttons');
Object.keys(DATA.examples[0]?.regimes||{}).forEach(r=>{const b=document.createElement('button'); b.textContent=r;
  b.onclick=()=>{current=r; draw();}; bs.appendChild(b);});
draw();
</script></body></html>
"""


def to_html(a: Audit, n: int) -> str:
    data = to_json(a, n)
    legend = "".join(f'<span style="background:{c}">{html.escape(name)}</span>'
                     for name, c in data["segment_colours"].items())
    cols = ["regime", "examples", "dropped", "tokens", "supervised_tokens", "weight_sum", "supervised_fraction",
            "truncated_examples", "turns_without_eot", "contents_spelling_special_tokens", "mask_hash"]
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(s[c]))}</td>" for c in cols) + "</tr>"
                   for s in data["stats"])
    table = "<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>" + rows + "</table>"
    drops = "".join(f"<p class='meta'>{html.escape(r.label)}: dropped {html.escape(md.drops.describe())}</p>"
                    for r, md in zip(a.regimes, a.masked) if md.drops.total)
    payload = json.dumps(data).replace("</", "<\\/")  # keep the JSON from closing the script tag
    return (_HTML.replace("__SOURCE__", html.escape(a.source)).replace("__LEGEND__", legend)
            .replace("__TABLE__", table + drops).replace("__DATA__", payload))


# ----------------------------------------------------------------------------------------------- CLI


def _from_experiment(path: str, overrides: list[str] | None, regimes: list[str] | None) -> Audit:
    exp = load_experiment(path, overrides)
    cfg = exp.config
    specs: list[RegimeSpec] = []
    if regimes:
        specs = [parse_regime(r) for r in regimes]
    else:
        for run in exp.runs:
            spec = RegimeSpec(run.config.regime.name, regime_options(run.config.regime))
            if spec.label not in [s.label for s in specs]:
                specs.append(spec)
    tok = tokenizer_for(cfg)
    src = cfg.data.train
    convs = load_conversations(src.path, fmt=src.format, split=src.split, name=src.name, limit=src.limit,
                               system_prompt=cfg.data.system_prompt, tools=src.tools,
                               require_assistant=any(s.name != "prompt_only" for s in specs))
    a = audit(convs, tok, specs, max_length=cfg.data.max_length, truncation=cfg.data.truncation,
              literal_content=cfg.data.literal_content, template_name=cfg.model.chat_template or "",
              boundary=cfg.data.boundary, eot=cfg.data.eot, source=f"{path} -> {src.path}")
    if cfg.data.replay is not None:  # the replay share of the steps the run would train on
        by_label = {RegimeSpec(r.config.regime.name, regime_options(r.config.regime)).label: r.config for r in exp.runs}
        for spec, md in zip(a.regimes, a.masked):
            rc = by_label.get(spec.label, cfg)
            a.replay.append(add_replay(md, plan_steps(md, rc), rc, tok)[2].as_dict() if md.examples else None)
    return a


def run_inspect(args: argparse.Namespace) -> int:
    if args.experiment:
        a = _from_experiment(args.experiment, args.override, args.regime)
    else:
        if not (args.data and args.tokenizer):
            raise ConfigError("give an experiment file, or --data FILE and --tokenizer DIR_OR_NAME",
                              where="harness inspect", fix="harness inspect experiments/smoke.yaml")
        specs = [parse_regime(r) for r in (args.regime or ["prompt_masked", "full", "prompt_only"])]
        template = resolve_template(args.chat_template)
        tok = load_tokenizer(args.tokenizer, chat_template=template)
        convs = load_conversations(args.data, require_assistant=any(s.name != "prompt_only" for s in specs))
        a = audit(convs, tok, specs, max_length=args.max_length, source=args.data,
                  template_name=args.chat_template or "")
    render_terminal(a, args.n)
    if args.html:
        Path(args.html).write_text(to_html(a, args.n), encoding="utf-8")
        print(f"wrote {args.html}")
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(a, args.n)), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help=help_line("inspect"),
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", help="experiment YAML (uses its model, data and grid regimes)")
    p.add_argument("--data", help="a data file (instead of an experiment)")
    p.add_argument("--tokenizer", help="tokenizer directory or hub name (with --data)")
    p.add_argument("--chat-template", help="chatml | plain | .jinja path (tokenizers without a template)")
    p.add_argument("--max-length", type=int, default=None, help="truncate to this many tokens (with --data)")
    p.add_argument("--regime", action="append", help="regime[:opt=val,...]; repeatable")
    p.add_argument("-o", "--override", action="append", help="dotted config override, e.g. data.max_length=64")
    p.add_argument("--n", type=int, default=3, help="examples to show (default 3)")
    p.add_argument("--html", help="write a self-contained HTML page here")
    p.add_argument("--json", help="write per-example tokens, segments, labels and weights here")
    p.set_defaults(func=run_inspect)
