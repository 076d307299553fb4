"""The k-shot recovery probe (eval.recovery): is a task's lost accuracy lost knowledge, or lost alignment?

Zheng et al. 2025 ("Spurious forgetting in continual learning of language models"): after training on task B a
model's task-A accuracy collapses, yet a handful of task-A examples bring most of it back: the knowledge was
still there, only the task alignment was gone. The probe that tells the two apart: for each k of
``eval.recovery.k``, fine-tune a *copy* of the model on the first k conversations of task A for a few full-batch
AdamW steps, then measure task A again. ``recovery/k0/...`` is the model itself; a curve that climbs back to
the base's score within a few examples is spurious forgetting, a flat one is real forgetting.

The loss is the harness's own prompt-masked rule (``harness.masking``, regime ``prompt_masked`` with its default
options: assistant content + end-of-turn, every turn), whatever regime trained the checkpoint: the probe must
be the same measurement for every run so its numbers compare across regimes. Mean NLL over the supervised
tokens of all k examples (token-weighted, as training's ``normalization: token``).

Metrics: ``recovery/k{k}/{metric}`` for every metric of the re-measured tasks (``recovery/k16/mmlu/
acc``) and ``recovery/k{k}/train_nll`` (k > 0: the mean NLL on the k examples after the last step).
"""

from __future__ import annotations

import contextlib
import copy
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.config.evaluation import RecoveryConfig
from harness.data.tokenize import Tokenized
from harness.errors import DataError
from harness.evaluation.probes import _batches, batch_tokens_for
from harness.masking import IGNORE_INDEX, apply_regime

PREFIX = "recovery"

#: what re-measures the tasks on a model: flat metrics {"<task>/<metric>": value}, or (those metrics, the
#: per-item sample rows) so that the findings' bootstrap can resample the probe's items too
TaskEval = Callable[[torch.nn.Module], "dict | tuple[dict, list]"]


def _measured(out) -> tuple[dict, list]:
    return (out[0], list(out[1])) if isinstance(out, tuple) else (out, [])


# ------------------------------------------------------------------------------------------ the k-shot data


def kshot_labels(examples: Sequence[Tokenized]) -> list[np.ndarray]:
    """Each example's labels under ``prompt_masked`` (IGNORE_INDEX off the response), via apply_regime so the
    rule (and its position-0 exception) is exactly the one training uses."""
    return [apply_regime(t, "prompt_masked").labels for t in examples]


def supervised_tokens(labels: Sequence[np.ndarray]) -> int:
    return int(sum(int((lab != IGNORE_INDEX).sum()) for lab in labels))


def check_examples(examples: Sequence[Tokenized], rc: RecoveryConfig, where: str) -> list[np.ndarray]:
    """The labels of the first max(k) examples, after checking that every k is available and supervises
    something: a k-shot run on fewer examples than asked, or on no response token at all, would report a
    recovery that never trained (DataError naming the file, never a silent zero)."""
    n = len(examples)
    top = max(rc.k)
    if top > n:
        raise DataError(f"eval.recovery.k asks for {top} examples, but the file gives {n} conversation(s) "
                        f"(after tokenization with data.max_length)", where=where,
                        fix=f"add conversations or use k <= {n}")
    labels = kshot_labels(examples[:top])
    for k in rc.k:
        if k and supervised_tokens(labels[:k]) == 0:
            raise DataError(f"the first {k} conversation(s) have no supervised (assistant response) token: "
                            f"a {k}-shot fine-tuning would train on nothing", where=where,
                            fix="give conversations with assistant turns (that data.max_length does not cut off)")
    return labels


def _micro_batches(examples: Sequence[Tokenized], labels: Sequence[np.ndarray], pad: int, batch_tokens: int
                   ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Right-padded (ids, attention, labels) micro-batches of the k examples. One step sums the gradients of
    all of them (the full batch); the split only bounds memory (the logits of k long conversations at once
    would not fit a large vocabulary), so the step is the same whatever the split."""
    out = []
    for idx, ids, att in _batches([t.input_ids for t in examples], pad, batch_tokens):
        lab = torch.full(ids.shape, IGNORE_INDEX, dtype=torch.long)
        for r, j in enumerate(idx):
            lab[r, :len(labels[j])] = torch.as_tensor(labels[j], dtype=torch.long)
        out.append((ids, att, lab))
    return out


def _nll_sum(model, ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """Summed NLL of the supervised tokens (position t predicts token t + 1; padding carries IGNORE_INDEX)."""
    dev = next(model.parameters()).device
    logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1).to(dev),
                           ignore_index=IGNORE_INDEX, reduction="sum")


@torch.no_grad()
def mean_nll(model, batches, n_supervised: int) -> float:
    """Mean NLL over the supervised tokens of all micro-batches, in eval mode (no dropout; mode restored)."""
    was_training = model.training
    model.eval()
    try:
        return float(sum(float(_nll_sum(model, *b)) for b in batches)) / n_supervised
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------ fine-tuning


def kshot_finetune(model, batches, n_supervised: int, steps: int, lr: float):
    """A fine-tuned deep copy of `model` (the original is never touched): `steps` full-batch AdamW steps
    (constant lr, no weight decay) on the mean NLL of the supervised tokens."""
    tuned = copy.deepcopy(model)
    # eval mode: dropout off, so the fine-tuning is a deterministic function of the weights and the seed
    tuned.eval()
    # every weight trains, whatever the checkpoint's requires_grad flags (train.freeze, a merged adapter):
    # the same probe for every checkpoint
    for p in tuned.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            for b in batches:
                # each micro-batch's sum over the whole batch's token count: the gradients add up to the
                # full batch's mean-NLL gradient
                (_nll_sum(tuned, *b) / n_supervised).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    del opt  # the optimizer state (2x the weights) is not needed for the evaluation that follows
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned


@contextlib.contextmanager
def _own_rng(model, seed: int) -> Iterator[None]:
    """Seed torch for the probe and give every RNG back as it was: the probe must not move the caller's
    random state. lm-eval's simple_evaluate reseeds python's, numpy's and torch's generators itself, so all
    three are saved, not only torch's."""
    dev = next(model.parameters()).device
    py, npy = random.getstate(), np.random.get_state()
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def recovery_probe(model, examples: Sequence[Tokenized], rc: RecoveryConfig, evaluate: TaskEval, *, pad: int,
                   where: str, k0: dict | None = None, batch_tokens: int | None = None) -> tuple[dict, dict]:
    """Run the probe: for each k of ``rc.k``, fine-tune a copy of `model` on ``examples[:k]`` (k = 0: the model
    itself, no copy) and re-measure the tasks with ``evaluate(model) -> {metric: value}``. `k0`: the model's
    own metrics on those tasks when the caller has them already (the evaluator measured them just before):
    reused for k = 0 rather than measured twice. `where`: the examples' file, for errors.

    Returns (metrics ``recovery/k{k}/...``, info: the supervised tokens, the train NLL before fine-tuning and
    the sample rows `evaluate` gave (if any) per k). `model` is left exactly as it was (weights, requires_grad flags, train/eval mode) and so is every RNG."""
    labels = check_examples(examples, rc, where)
    bt = batch_tokens or batch_tokens_for(model)
    metrics: dict = {}
    info: dict = {"supervised_tokens": {}, "nll_before": {}, "samples": {}}
    with _own_rng(model, rc.seed):
        for k in rc.k:
            pre = f"{PREFIX}/k{k}/"
            if k == 0:
                m, info["samples"][k] = (dict(k0), []) if k0 is not None else _measured(evaluate(model))
                metrics.update({pre + name: v for name, v in m.items()})
                continue
            torch.manual_seed(rc.seed)  # each k from the same seed: k=16's numbers do not depend on k=4's run
            n_sup = supervised_tokens(labels[:k])
            batches = _micro_batches(examples[:k], labels[:k], pad, bt)
            info["supervised_tokens"][k] = n_sup
            info["nll_before"][k] = mean_nll(model, batches, n_sup)
            tuned = kshot_finetune(model, batches, n_sup, rc.steps, rc.lr)
            train_nll = mean_nll(tuned, batches, n_sup)
            m, info["samples"][k] = _measured(evaluate(tuned))
            del tuned
            metrics.update({pre + name: v for name, v in m.items()})
            metrics[pre + "train_nll"] = train_nll
    return metrics, info


def item_rows(samples_by_k: dict) -> list[dict]:
    """The probe's per-item rows for the samples file: each lm-eval sample of k's re-measurement, as task
    ``recovery/k{k}/<task>`` with its doc id and numeric scores only (the prompts and generations are the
    checkpoint's own samples' business; analysis/items.py reads recovery/k16/<task>/<metric> from these)."""
    out = []
    for k, rows in samples_by_k.items():
        for r in rows:
            if "task" not in r or "doc_id" not in r:
                continue
            scores = {n: v for n, v in r.items() if n not in ("task", "doc_id") and isinstance(v, (int, float))
                      and not isinstance(v, bool)}
            out.append({"task": f"{PREFIX}/k{k}/{r['task']}", "doc_id": r["doc_id"], **scores})
    return out
