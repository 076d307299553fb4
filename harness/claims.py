"""What a study claims, declared in its experiment file before the runs: the ``claims:`` vocabulary, its checks
(file:line errors like every other key), each claim's hash and the registration that fixes them.

A claim is data, not Python. Each names a metric, the runs it compares (*sides*: mappings of axis -> value), how
a side with several configurations is reduced (``pick``), a test against a boundary written in a unit, a family
(``primary`` / ``secondary``) and the checkpoint it is judged at. analysis/claims.py turns it into a statistic of
per-item results and judges it with a calibrated interval; analysis/findings.py applies the multiplicity
corrections and the registration (post hoc or not) before the report shows it.

Effects (exactly one per claim)::

    value:    SIDE                       the side's value (e.g. the base's accuracy)
    compare:  {a: SIDE, b: SIDE}         a - b, paired by seed and item (b may be base)
    trend:    {axis: A, log: true}       least-squares slope of the metric over axis A's levels
    optimum:  {axis: A}                  best level strictly inside A's range - best end level
    range:    {axis: A}                  best level - worst level of A (for "A barely matters" with within:)
    contrast: [{side: SIDE, weight: w}]  sum of w * side (e.g. k-shot - (A + B) / 2: a share of what was lost)
    fit:      {x: METRIC, across: [axes], minus: METRIC}   R^2 across configurations of the metric on x (minus R^2 on
                                         another metric), each configuration's seed mean one point

SIDE is ``base`` (the base model) or a mapping {axis: value | [values]} (a list: several levels; a list of
mappings: their union; a value with * or ? is a glob, e.g. data.train.path: "*longprompt*"); the keys
``checkpoint`` and ``metric`` inside a side pick that side's checkpoint and metric (e.g. the k-shot recovery
probe's re-asked questions against the task's own: paired by item). Axes a side leaves
free (besides the seed) are reduced by ``pick``: ``best`` / ``worst`` (the level chosen on one half of the item
groups and judged on the other, both ways: cross-fitting), ``mean`` (over the levels), ``all`` (the least
favourable level: the claim must hold at every one), ``each`` (one claim per level of the free axes).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from harness.config.load import LineMap, _check_leaf
from harness.errors import ConfigError, did_you_mean

FAMILIES = ("primary", "secondary")
TESTS = ("above", "below", "within")
#: unit -> factor from the written bound to the metric's scale (5 pts = 0.05 of a rate)
UNITS = {"pts": 0.01, "pct": 0.01, "nats": 1.0, "nats/decade": 1.0, "ratio": 1.0, "r2": 1.0}
EFFECTS = ("value", "compare", "trend", "optimum", "range", "contrast", "fit")
PICKS = ("best", "worst", "mean", "all", "each")
KEYS = ("id", "text", "family", "metric", "checkpoint", "where", "per", "pick", "by", "test", "unit", "source",
        *EFFECTS)
BASE = "base"
_CHECKPOINT = re.compile(r"^(final|epoch \d+(\.\d+)?|step \d+|(lowest|highest) in first half)$")
EXPLAIN = __doc__.split("Effects (exactly one per claim)::", 1)[1]


@dataclass(frozen=True)
class Claim:
    """One declared claim (see the module docstring); ``raw`` is its YAML mapping as written, which its hash
    covers: any edit makes it a new claim."""

    id: str
    metric: str
    effect: str
    spec: Any
    test: str
    bound: float
    unit: str
    family: str = "secondary"
    text: str = ""
    checkpoint: str = "final"
    where: dict = field(default_factory=dict)
    per: tuple = ()
    pick: str = "best"
    by: str | None = None
    source: str = ""
    raw: dict = field(default_factory=dict)
    line: str = ""

    @property
    def boundary(self) -> float:
        """The bound on the metric's scale (a within: margin is +-boundary)."""
        return self.bound * UNITS[self.unit]

    @property
    def digest(self) -> str:
        return claim_hash(self.raw)

    def sides(self) -> list:
        """The sides the effect names (compare's a and b, value's, each contrast term's); [] for the axis effects."""
        if self.effect == "compare":
            return [self.spec["a"], self.spec["b"]]
        if self.effect == "value":
            return [self.spec]
        return [t["side"] for t in self.spec] if self.effect == "contrast" else []

    def words(self) -> str:
        return self.text or f"{self.id}: {self.effect} of {self.metric} {self.test} {self.bound:g} {self.unit}"


def claim_hash(raw: dict) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_claims(raw: Any, lines: LineMap | None = None) -> list[Claim]:
    """The experiment's ``claims:`` checked; [] when it declares none."""
    if raw is None or raw == []:
        return []
    where = lines.where("claims") if lines else "claims"
    if not isinstance(raw, list):
        raise ConfigError("claims must be a list of mappings", where=where,
                          fix="write claims: [{id: ..., metric: ..., compare: {a: ..., b: ...}, test: {above: 0}, "
                              "unit: pts}] (harness config --explain lists the vocabulary)")
    out: list[Claim] = []
    for i, c in enumerate(raw):
        here = lines.where(f"claims[{i}]") if lines else f"claims[{i}]"
        out.append(_claim(c, here, lines, i))
        if out[-1].id in [o.id for o in out[:-1]]:
            raise ConfigError(f"two claims have the id {out[-1].id!r}", where=here, fix="give every claim its own id")
    return out


def _claim(c: Any, here: str, lines: LineMap | None, i: int) -> Claim:
    def at(key: str) -> str:
        return lines.where(f"claims[{i}].{key}") if lines else f"{here}.{key}"

    if not isinstance(c, dict):
        raise ConfigError(f"claim {i + 1} must be a mapping", where=here, fix="see harness config --explain")
    for k in c:
        if k not in KEYS:
            raise ConfigError(f"unknown claim key {k!r}" + did_you_mean(str(k), list(KEYS)), where=at(k),
                              fix=f"valid keys: {', '.join(KEYS)}")
    cid = c.get("id")
    if not isinstance(cid, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", cid):
        raise ConfigError(f"claim {i + 1}: id {cid!r} must be lower-case letters, digits and '_'", where=at("id"),
                          fix="e.g. id: masked_beats_full")
    name = f"claim {cid!r}"
    metric = c.get("metric")
    if not isinstance(metric, str) or "/" not in metric:
        raise ConfigError(f"{name}: metric must be a per-item metric such as <task>/exact_match",
                          where=at("metric"), fix="write metric: <task>/<metric> (harness report lists the metrics)")
    effects = [e for e in EFFECTS if e in c]
    if len(effects) != 1:
        raise ConfigError(f"{name} must have exactly one effect ({', '.join(EFFECTS)}); it has "
                          f"{', '.join(effects) or 'none'}", where=here, fix="e.g. compare: {a: ..., b: ...}")
    effect = effects[0]
    spec = _effect(effect, c[effect], name, at(effect))
    test = c.get("test")
    if not isinstance(test, dict) or len(test) != 1 or next(iter(test)) not in TESTS:
        raise ConfigError(f"{name}: test must be one of {{above: x}}, {{below: x}}, {{within: m}}", where=at("test"),
                          fix="e.g. test: {above: 0}")
    kind, bound = next(iter(test.items()))
    if not isinstance(bound, (int, float)) or isinstance(bound, bool) or (kind == "within" and bound <= 0):
        raise ConfigError(f"{name}: the {kind} bound must be a number" + (" > 0" if kind == "within" else ""),
                          where=at("test"), fix="e.g. test: {within: 5} with unit: pts")
    unit = c.get("unit")
    if unit not in UNITS:
        raise ConfigError(f"{name}: unit {unit!r} must be one of {', '.join(UNITS)}", where=at("unit"),
                          fix="pts/pct: bounds in percent of a rate (5 = 0.05); nats, ratio, r2: as measured")
    family = c.get("family", "secondary")
    if family not in FAMILIES:
        raise ConfigError(f"{name}: family {family!r} must be primary or secondary", where=at("family"),
                          fix="primary claims get Holm's correction, secondary Benjamini-Hochberg's")
    checkpoint = str(c.get("checkpoint", "final"))
    if not _CHECKPOINT.match(checkpoint):
        raise ConfigError(f"{name}: checkpoint {checkpoint!r} not understood", where=at("checkpoint"),
                          fix="final, 'epoch N', 'step N', 'lowest in first half' or 'highest in first half'")
    pick = c.get("pick", "best")
    if pick not in PICKS:
        raise ConfigError(f"{name}: pick {pick!r} must be one of {', '.join(PICKS)}", where=at("pick"),
                          fix="best/worst: selected on half the items, judged on the other; mean; all; each")
    where = c.get("where") or {}
    _side(where, name, at("where"), allow_base=False)
    per = c.get("per") or []
    per = [per] if isinstance(per, str) else per
    if not isinstance(per, list) or not all(isinstance(p, str) for p in per):
        raise ConfigError(f"{name}: per must be an axis or a list of axes", where=at("per"),
                          fix="e.g. per: [data.train.path, data.train.limit]: one claim per combination")
    for p in per:
        _axis(p, at("per"))
    by = c.get("by")
    if by is not None and (not isinstance(by, str) or "/" not in by):
        raise ConfigError(f"{name}: by must be a metric (the one best/worst are chosen by)", where=at("by"),
                          fix="e.g. by: <task>/exact_match")
    return Claim(cid, metric, effect, spec, kind, float(bound), unit, family, str(c.get("text") or ""),
                 checkpoint, dict(where), tuple(per), pick, by, str(c.get("source") or ""), dict(c), here)


def _axis(key: Any, where: str) -> None:
    if key in ("stage", "checkpoint", "run_id"):
        return
    if not isinstance(key, str):
        raise ConfigError(f"axis {key!r} must be a dotted key", where=where, fix="e.g. train.lr")
    _check_leaf(key, where)


def _side(side: Any, name: str, where: str, allow_base: bool = True) -> None:
    if side == BASE and allow_base:
        return
    sides = side if isinstance(side, list) and side and all(isinstance(s, dict) for s in side) else [side]
    for s in sides:
        if not isinstance(s, dict):
            raise ConfigError(f"{name}: a side must be 'base' or a mapping {{axis: value}} (or a list of them)",
                              where=where, fix="e.g. a: {regime.name: prompt_masked}")
        for k, v in s.items():
            if k == "metric":
                if not isinstance(v, str) or "/" not in v:
                    raise ConfigError(f"{name}: a side's metric must be a per-item metric", where=where,
                                      fix="e.g. {stage: qa, metric: recovery/k16/<task>/exact_match}")
                continue
            _axis(k, where)
            if k == "checkpoint" and not _CHECKPOINT.match(str(v)):
                raise ConfigError(f"{name}: checkpoint {v!r} not understood", where=where,
                                  fix="final, 'epoch N', 'step N', 'lowest in first half'")


def _effect(effect: str, spec: Any, name: str, where: str) -> Any:
    if effect == "value":
        _side(spec, name, where)
        return spec
    if effect == "compare":
        if not isinstance(spec, dict) or set(spec) != {"a", "b"}:
            raise ConfigError(f"{name}: compare needs exactly a and b", where=where,
                              fix="compare: {a: {regime.name: prompt_masked}, b: base}")
        _side(spec["a"], name, where)
        _side(spec["b"], name, where)
        return spec
    if effect in ("trend", "optimum", "range"):
        if not isinstance(spec, dict) or "axis" not in spec or set(spec) - {"axis", "log"}:
            raise ConfigError(f"{name}: {effect} needs {{axis: <dotted key>}}" + (" and optional log: true"
                              if effect == "trend" else ""), where=where, fix=f"{effect}: {{axis: train.lr}}")
        _axis(spec["axis"], where)
        return {"axis": spec["axis"], "log": bool(spec.get("log", False))}
    if effect == "contrast":
        if not isinstance(spec, list) or len(spec) < 2:
            raise ConfigError(f"{name}: contrast needs two or more {{side, weight}} terms", where=where,
                              fix="contrast: [{side: {stage: bio}, weight: 1}, {side: {stage: qa}, weight: -0.5}]")
        for t in spec:
            if not isinstance(t, dict) or set(t) != {"side", "weight"} or not isinstance(t["weight"], (int, float)):
                raise ConfigError(f"{name}: each contrast term is {{side: SIDE, weight: number}}", where=where,
                                  fix="e.g. {side: base, weight: -1}")
            _side(t["side"], name, where)
        return spec
    if not isinstance(spec, dict) or "x" not in spec or "across" not in spec or set(spec) - {"x", "across", "minus"}:
        raise ConfigError(f"{name}: fit needs x (a metric) and across (axes); minus (a metric) is optional",
                          where=where, fix="fit: {x: forgetting/kl_sft, across: [regime.name, train.lr]}")
    for a in spec["across"] if isinstance(spec["across"], list) else [spec["across"]]:
        _axis(a, where)
    return {"x": spec["x"], "across": list(spec["across"]) if isinstance(spec["across"], list) else [spec["across"]],
            "minus": spec.get("minus")}


# ------------------------------------------------------------------------------------------ registration


def registration(claims: list[Claim], existing: dict | None, results_exist: bool, when: str) -> dict:
    """plan.json's ``claims`` after `harness run` saw `claims`: ``registered`` keeps, for every claim hash ever
    declared, when it was first seen and whether results existed then (a claim first seen after results existed
    is post hoc). Entries are never removed or rewritten: a claim edited later is a new hash, registered post hoc.
    ``declared`` is the claims as written at this launch (the report of a bare results directory reads them)."""
    registered = dict((existing or {}).get("registered") or {})
    for c in claims:
        key = f"{c.id}:{c.digest}"
        if key not in registered:
            registered[key] = {"id": c.id, "hash": c.digest, "first_seen": when, "results_existed": results_exist}
    digest = claim_hash({"claims": [c.raw for c in claims]}) if claims else None
    return {"hash": digest, "registered": registered, "declared": [c.raw for c in claims]}


def status(claim: Claim, registry: dict | None) -> str:
    """'preregistered': declared (this exact text) before any result existed; 'post hoc': declared or changed
    after results existed, or never registered by `harness run`."""
    entry = ((registry or {}).get("registered") or {}).get(f"{claim.id}:{claim.digest}")
    return "preregistered" if entry is not None and not entry.get("results_existed") else "post hoc"
