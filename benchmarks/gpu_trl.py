"""The GPU suite's TRL worker (benchmarks/gpu_suite.py, part ``trl``): SFTTrainer on the throughput part's shape
and the very examples ours trains on, timed step to step. Kept apart so that gpu_suite.py stays a readable size."""

from __future__ import annotations

import tempfile
import time

import torch

import gpu_smoke as G


def w_trl(job: dict, save) -> None:
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    dev, seq, attn, warmup = torch.device(job["device"]), job["seq"], job["attn"], job["warmup"]
    shape = dict(job["shape"], max_position_embeddings=max(job["shape"]["max_position_embeddings"], seq))
    data, plan = G.engine_plan(warmup + job["steps"], job["rows"], seq, shape["vocab_size"])
    used = [i for step in plan for r in step for i in r.examples]  # the very examples ours trains on
    ds = Dataset.from_dict({"input_ids": [data.examples[i].input_ids.tolist() for i in used],
                            "completion_mask": [(data.masks[i].labels != -100).astype(int).tolist() for i in used]})
    vocab = WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>")  # data ids are >= 3: no pads
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(vocab), pad_token="<pad>", eos_token="<eos>",
                                  unk_token="<unk>")
    model = G.build_model(shape, attn, dev, torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    acc, steps = {"tokens": 0, "supervised": 0, "pairs": 0}, []
    mark = {"t": 0.0, "acc": dict(acc)}

    class Trainer(SFTTrainer):  # counts what each micro-batch holds; the step itself is TRL's
        def training_step(self, model, inputs, num_items_in_batch=None):
            acc["supervised"] += int((inputs["labels"] != -100).sum())
            pos = inputs["position_ids"][0]  # padding-free: one flattened row, sequences restart at 0
            starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
            lens = [e - s for s, e in zip(starts[:-1], starts[1:])]
            acc["tokens"] += sum(lens)
            acc["pairs"] += sum(n * (n + 1) // 2 for n in lens)
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            G.sync(dev)
            mark["t"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            G.sync(dev)
            now = time.perf_counter()
            steps.append(dict({k: acc[k] - mark["acc"][k] for k in acc}, seconds=now - mark["t"]))
            mark["t"], mark["acc"] = now, dict(acc)
            print(f"trl step {state.global_step}: {steps[-1]['tokens'] / steps[-1]['seconds']:,.0f} tok/s "
                  f"({steps[-1]['seconds']:.2f}s)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SFTConfig(output_dir=tmp, max_steps=warmup + job["steps"], per_device_train_batch_size=job["batch"],
                        gradient_accumulation_steps=job["accum"], learning_rate=1e-5, lr_scheduler_type="constant",
                        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
                        report_to="none", bf16=True, gradient_checkpointing=False, use_cpu=dev.type != "cuda",
                        max_length=seq, packing=True, packing_strategy="bfd", padding_free=True,
                        completion_only_loss=True, optim="adamw_torch_fused", dataloader_num_workers=0,
                        disable_tqdm=True, seed=0, data_seed=0)
        trainer = Trainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    timed = steps[warmup:]
    sec = sum(s["seconds"] for s in timed)
    tokens, sup, pairs = (sum(s[k] for s in timed) for k in ("tokens", "supervised", "pairs"))
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    save({"status": "ok", "attn": attn, "n_params": n_params, "tokens": tokens, "supervised": sup, "seconds": sec,
          "tokens_per_s": tokens / sec, "tokens_per_step": tokens / len(timed), "steps": len(timed), "warmup": warmup,
          "model_flops": 6 * n_params * tokens + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * pairs,
          "step_seconds": [s["seconds"] for s in steps], "per_device_train_batch_size": job["batch"],
          "gradient_accumulation_steps": job["accum"], "packing_strategy": "bfd", "padding_free": True,
          "optimizer": f"{type(opt).__name__}(fused={opt.defaults.get('fused')})",
          "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None})
