"""Loss-masking regimes: pure functions from per-token segments to per-token loss weights.

A regime never re-tokenizes: it reads the `Segment` of each token (see harness.data.tokenize) and returns
a float weight per token; ``labels`` are the input ids where the weight is non-zero and -100 elsewhere
(HF convention: labels are aligned with input ids and shifted inside the loss).

Policies, stated once:

* **Template/control tokens** (role headers, separators, BOS, a template's default system prompt) are in
  the loss only under ``full`` (and with weight lambda under ``prompt_weight``, so that lambda=1 *is* full;
  lambda_p under ``weighted``).
  ``prompt_only`` can include them with ``template=True``.
* **End-of-turn tokens** (e.g. ``<|im_end|>`` after an assistant message) belong to the response: the model
  must learn to stop (axolotl#3754). ``eot=False`` removes them from ``prompt_masked``.
* **Position 0** of every example has weight 0 in every regime: nothing precedes it, so it cannot be
  predicted, and in a packed row its "prediction" would come from the previous example.
* ``turns='last'`` supervises only the last assistant turn; earlier assistant turns become context
  (weight lambda under ``prompt_weight``, lambda_p under ``weighted``).
* ``weighted`` (Weighted Instruction Tuning) splits the same tokens as ``prompt_weight``: lambda_p on every
  non-response token, lambda_r on the response. The paper divides by the number of tokens of non-zero weight:
  that is ``train.normalization: nonzero`` (harness.training.loss), not a property of the regime.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from harness.data.prepare import Drops
from harness.data.tokenize import PROMPT_SEGMENTS, RESPONSE_SEGMENTS, Segment, Tokenized
from harness.errors import ConfigError, did_you_mean

IGNORE_INDEX = -100


@dataclass
class Masked:
    """Output of a regime: labels (-100 where the weight is 0) and float weights, aligned with input ids."""

    labels: np.ndarray  # int64 [T]
    weights: np.ndarray  # float32 [T]

    @property
    def n_supervised(self) -> int:
        return int((self.weights > 0).sum())


def _check_turns(turns: str) -> None:
    if turns not in ("all", "last"):
        raise ConfigError(f"turns must be 'all' or 'last', got {turns!r}", where="regime.turns",
                          fix="use turns: all (every assistant turn) or turns: last")


# what an assistant turn generates besides its content (harness/data/locate.py): response unless an option
# (below) moves it to the context
_GENERATED = [Segment.ASSISTANT, Segment.TOOL_CALL, Segment.REASONING, Segment.EMPTY_REASONING]


def _response(t: Tokenized, turns: str, eot: bool) -> np.ndarray:
    _check_turns(turns)
    segs = _GENERATED + [Segment.EOT] if eot else _GENERATED
    mask = np.isin(t.segments, segs)
    if turns == "last":
        mask &= t.turns == t.last_assistant_turn
    return mask


def prompt_masked(t: Tokenized, *, turns: str = "all", eot: bool = True) -> np.ndarray:
    """Loss on assistant content (+ end-of-turn) only: the standard SFT mask."""
    return _response(t, turns, eot).astype(np.float32)


def full(t: Tokenized) -> np.ndarray:
    """Loss on every token, as in pretraining."""
    return np.ones(len(t), dtype=np.float32)


def prompt_only(t: Tokenized, *, template: bool = False) -> np.ndarray:
    """The control: loss on system/user/tool content only (optionally template tokens too)."""
    segs = list(PROMPT_SEGMENTS) + ([Segment.TEMPLATE] if template else [])
    return np.isin(t.segments, segs).astype(np.float32)


def _unit_weight(w: float, key: str) -> None:
    if w != w or not (0.0 <= float(w) <= 1.0):
        raise ConfigError(f"{key.replace('_', ' ')} must be in [0, 1], got {w}", where=f"regime.{key}",
                          fix="use a value such as 0.0, 0.1 or 1.0")


def prompt_weight(t: Tokenized, *, prompt_weight: float, turns: str = "all", eot: bool = True) -> np.ndarray:
    """Weight 1 on response tokens and `prompt_weight` (lambda) on every other token (Huerta-Enochian & Ko 2024).

    lambda=0 is numerically `prompt_masked`, lambda=1 is `full` (same turns/eot options)."""
    _unit_weight(prompt_weight, "prompt_weight")
    resp = _response(t, turns, eot)
    return np.where(resp, np.float32(1.0), np.float32(prompt_weight)).astype(np.float32)


def weighted(t: Tokenized, *, prompt_weight: float = 0.0, response_weight: float = 1.0, turns: str = "all",
             eot: bool = True) -> np.ndarray:
    """Weighted Instruction Tuning (WIT; Chatterjee et al., TACL 2025): weight lambda_r = `response_weight` on
    response tokens and lambda_p = `prompt_weight` on every other token.

    The paper's loss is ``-(sum lambda_p log p(prompt tokens) + lambda_r log p(response tokens)) / N`` with N
    the number of tokens of non-zero weight: pair this regime with ``train.normalization: nonzero`` to get it
    (``token`` divides by the weight sum instead). "Prompt" is what the paper's code weights as prompt: every
    token before the response in the rendered text (template and system tokens included), so this splits the
    tokens exactly as `prompt_weight` does (turns/eot too; the response keeps its end-of-turn token, as the
    paper's response keeps its EOS). Weights are in [0, 1], the paper's grid. (lambda_p, lambda_r) = (0, 1) is
    numerically `prompt_masked`, (1, 1) is `full`, (lambda, 1) is `prompt_weight`."""
    _unit_weight(prompt_weight, "prompt_weight")
    _unit_weight(response_weight, "response_weight")
    if prompt_weight == 0 and response_weight == 0:
        raise ConfigError("weighted with prompt_weight 0 and response_weight 0 supervises no token",
                          where="regime.response_weight", fix="give at least one of the two weights a value > 0")
    resp = _response(t, turns, eot)
    return np.where(resp, np.float32(response_weight), np.float32(prompt_weight)).astype(np.float32)


RegimeFn = Callable[..., np.ndarray]
REGIMES: dict[str, RegimeFn] = {}
# the options a regime takes are its keyword-only parameters, each named as a field of RegimeConfig (the
# `regime:` section): declared once, in the function's signature
REGIME_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_regime(name: str) -> Callable[[RegimeFn], RegimeFn]:
    """Decorator to add a regime: ``@register_regime("mine")`` over ``fn(t, *, turns="all") -> weights``.

    Its keyword-only parameters are its options; each must be a field of the ``regime:`` config section
    (turns, prompt_weight, response_weight, eot, template), which is where a grid sets them."""

    def deco(fn: RegimeFn) -> RegimeFn:
        opts = tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY)
        unknown = [o for o in opts if o not in _CONFIG_OPTIONS]
        if unknown:
            raise ConfigError(f"regime '{name}' takes options {unknown} that the regime section has no key for",
                              where=f"{fn.__module__}.{fn.__name__}",
                              fix=f"name its keyword-only options after regime keys: {list(_CONFIG_OPTIONS)}")
        REGIMES[name] = fn
        REGIME_OPTIONS[name] = opts
        return fn

    return deco


# RegimeConfig's fields besides `name`
_CONFIG_OPTIONS = ("turns", "prompt_weight", "response_weight", "eot", "template")
for _name, _fn in (("prompt_masked", prompt_masked), ("full", full), ("prompt_only", prompt_only),
                   ("prompt_weight", prompt_weight), ("weighted", weighted)):
    register_regime(_name)(_fn)


# options of every regime (RegimeConfig fields): which generated parts are response, how multi-turn data is cut.
# Their defaults leave every existing mask as it was; regime_options passes them only when set.
COMMON_OPTIONS = {"reasoning": ("train", "mask"), "tool_calls": ("train", "mask"),
                  "empty_reasoning": ("mask", "train"), "multiturn": ("render", "per_turn")}
_MASKABLE = {"reasoning": Segment.REASONING, "tool_calls": Segment.TOOL_CALL, "empty_reasoning": Segment.EMPTY_REASONING}


def check_regime(regime: str, options: dict | None = None) -> None:
    if regime not in REGIMES:
        raise ConfigError(f"unknown regime '{regime}'" + did_you_mean(regime, REGIMES), where="regime.name",
                          fix=f"use one of {sorted(REGIMES)}")
    for key in options or {}:
        if key in COMMON_OPTIONS:
            if options[key] not in COMMON_OPTIONS[key]:
                raise ConfigError(f"regime.{key} must be one of {list(COMMON_OPTIONS[key])}, got {options[key]!r}",
                                  where=f"regime.{key}", fix=f"use {key}: {COMMON_OPTIONS[key][0]}")
            continue
        if key not in REGIME_OPTIONS[regime]:
            raise ConfigError(f"regime '{regime}' has no option '{key}'"
                              + did_you_mean(key, REGIME_OPTIONS[regime]), where=f"regime.{key}",
                              fix=f"options of {regime}: {list(REGIME_OPTIONS[regime]) or 'none'}")


def regime_options(rc) -> dict:
    """The keyword options a ``regime:`` config section passes to its regime function (those it takes)."""
    check_regime(rc.name)
    out = {k: getattr(rc, k) for k in REGIME_OPTIONS[rc.name]}
    if getattr(rc, "multiturn", "render") == "per_turn" and "turns" in out:
        out["turns"] = "last"  # what apply_regime does with per-turn examples, said where the options are shown
    return {**out, **{k: getattr(rc, k) for k, vals in COMMON_OPTIONS.items() if getattr(rc, k, vals[0]) != vals[0]}}


def _as_context(t: Tokenized, common: dict) -> Tokenized:
    """`t` with the generated parts an option masks relabelled as template text: the regime then weights them
    as it weights context (0 under prompt_masked, lambda under prompt_weight, 1 under full)."""
    masked = [seg for key, seg in _MASKABLE.items() if common.get(key, COMMON_OPTIONS[key][0]) == "mask"]
    hit = np.isin(t.segments, masked)
    if not hit.any():
        return t
    return dataclasses.replace(t, segments=np.where(hit, np.int8(Segment.TEMPLATE), t.segments).astype(t.segments.dtype))


def apply_regime(tokenized: Tokenized, regime: str, **options) -> Masked:
    """Labels and weights of one tokenized conversation under a regime (pure; never re-tokenizes).

    The common options (COMMON_OPTIONS) apply to every regime: ``reasoning`` / ``tool_calls`` /
    ``empty_reasoning: mask`` move those tokens to the context; ``multiturn: per_turn`` examples (one per
    assistant turn, harness.data.prepare.per_turn) supervise their last turn. Per-message loss weights
    declared in the data (``weight`` / ``train`` / ``loss``...) multiply the weights of that message's tokens."""
    check_regime(regime, options)
    common = {k: options.pop(k) for k in list(options) if k in COMMON_OPTIONS}
    if common.get("multiturn") == "per_turn" and "turns" in REGIME_OPTIONS[regime]:
        options["turns"] = "last"
    t = _as_context(tokenized, common)
    weights = np.asarray(REGIMES[regime](t, **options), dtype=np.float32)
    if weights.shape != tokenized.input_ids.shape:
        raise ValueError(f"regime {regime} returned {weights.shape} weights for {len(tokenized)} tokens")
    msg_w = tokenized.meta.get("message_weights")
    if msg_w is not None:
        weights = weights * msg_w[tokenized.turns]
    if len(weights):
        weights[0] = 0.0  # position 0 cannot be predicted (see module docstring)
    labels = np.where(weights > 0, tokenized.input_ids, IGNORE_INDEX).astype(np.int64)
    return Masked(labels, weights)


def mask_hash(masks: list[Masked], input_ids: list[np.ndarray] | None = None) -> str:
    """Short sha256 over every example's labels and weights: two runs with equal hashes trained on the
    same supervised tokens with the same weights."""
    h = hashlib.sha256()
    for i, m in enumerate(masks):
        if input_ids is not None:
            h.update(np.ascontiguousarray(input_ids[i], dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(m.labels, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(m.weights, dtype=np.float32).tobytes())
        h.update(b"|")
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------------ a whole data set


@dataclass
class MaskedData:
    """Examples kept under one regime, their masks, and what was dropped (and why)."""

    regime: str
    options: dict
    examples: list[Tokenized]
    masks: list[Masked]
    drops: Drops

    def stats(self) -> dict:
        n_tok = int(sum(len(t) for t in self.examples))
        n_sup = int(sum(m.n_supervised for m in self.masks))
        w_sum = float(sum(float(m.weights.sum()) for m in self.masks))
        resp = int(sum(int(np.isin(t.segments, RESPONSE_SEGMENTS).sum()) for t in self.examples))
        return {
            "regime": self.regime, "options": dict(self.options),
            "examples": len(self.examples), "dropped": self.drops.total, "drop_reasons": dict(self.drops.counts),
            "tokens": n_tok, "supervised_tokens": n_sup, "weight_sum": round(w_sum, 4),
            "supervised_fraction": round(n_sup / n_tok, 6) if n_tok else 0.0,
            "response_tokens": resp,
            "truncated_examples": sum(1 for t in self.examples if t.truncated),
            "boundary": dict(Counter(t.boundary for t in self.examples)),
            "turns_without_eot": int(sum(t.no_eot_turns for t in self.examples)),
            "contents_spelling_special_tokens": int(sum(t.literal_contents for t in self.examples)),
            **agentic_stats(self.examples, self.masks),
            "mask_hash": mask_hash(self.masks, [t.input_ids for t in self.examples]),
        }


def agentic_stats(examples: Sequence[Tokenized], masks: Sequence[Masked]) -> dict:
    """Tool-call / reasoning tokens and how many are supervised, reasoning the template dropped or that was
    written inline, per-message weights, and the data fields the harness ignored (only the keys that occur)."""
    out: dict = {}
    for seg in (Segment.TOOL_CALL, Segment.REASONING, Segment.EMPTY_REASONING):
        n = sum(int((t.segments == seg).sum()) for t in examples)
        if n:
            sup = sum(int(((t.segments == seg) & (m.weights > 0)).sum()) for t, m in zip(examples, masks))
            out[f"{seg.name.lower()}_tokens"] = {"total": n, "supervised": sup}
    for key in ("reasoning_dropped", "reasoning_inlined"):
        n = sum(int(t.meta.get(key, 0)) for t in examples)
        if n:
            out[f"{key}_turns"] = n
    n_w = sum(int((t.meta["message_weights"] != 1).sum()) for t in examples if "message_weights" in t.meta)
    if n_w:
        out["messages_with_data_weight"] = n_w
    ignored = Counter(k for t in examples for k in set(t.meta.get("ignored_fields", ())))
    if ignored:
        out["ignored_fields"] = dict(ignored)
    return out


def apply_all(examples: Sequence[Tokenized], regime: str, options: dict | None = None,
              drops: Drops | None = None) -> MaskedData:
    """Apply a regime to every example; an example left with zero supervised tokens (e.g. its response was
    truncated away) is dropped and counted, never trained on."""
    options = dict(options or {})
    kept, masks = [], []
    d = Drops().merged(drops) if drops is not None else Drops()
    for t in examples:
        m = apply_regime(t, regime, **options)
        if m.n_supervised == 0:
            d.add("zero_supervised_tokens" + ("_after_truncation" if t.truncated else ""), t.source)
            continue
        kept.append(t)
        masks.append(m)
    return MaskedData(regime, options, kept, masks, d)
