#!/usr/bin/env python3
"""torch_train_bench.py — the PyTorch side of the training comparisons (scripts/bench-train-cpu, and
scripts/bench-train-gpu with --device cuda).

Trains transformers' DeepseekV3ForCausalLM (the same config.json dseek trains) on random tokens with
AdamW and prints the median tokens/s of full steps (forward, backward, optimizer). On the CPU: f32,
`--threads` intra-op threads. On the GPU: bf16 weights, sdpa attention, experts through transformers'
default (grouped_mm), fused AdamW, each step synchronized; the peak memory is printed too. MTP is not
implemented in transformers, so the comparison runs with MTP off.
Python is used only as an outside reference here; dseek never needs it.
"""
import argparse, statistics, sys, time

import torch
from transformers import DeepseekV3ForCausalLM

from torch_bench_model import load_config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    gpu = a.device == "cuda"
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(a.config)
    model = None
    for impl in (None, "eager"):  # transformers' default experts backend first
        try:
            if impl is not None:
                cfg._experts_implementation = impl
            m = DeepseekV3ForCausalLM(cfg)
            m = m.to("cuda", torch.bfloat16) if gpu else m.float()
            impl = getattr(m.config, "_experts_implementation", None) or "default"
            ids = torch.randint(0, cfg.vocab_size, (1, 8), device=a.device)
            m(input_ids=ids, labels=ids).loss.backward()
            model, used = m, impl
            break
        except Exception as e:  # an implementation this build lacks on the CPU
            print(f"experts implementation {impl} unavailable on CPU: {type(e).__name__}: {e}", file=sys.stderr)
    if model is None:
        sys.exit("no experts implementation ran")
    model.train()
    try:
        if gpu:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), foreach=True)
    except TypeError:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))
    step_fn = model
    if a.compile:
        step_fn = torch.compile(model)
    times = []
    for s in range(a.steps + 2):
        ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=a.device)
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out = step_fn(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        if gpu:
            torch.cuda.synchronize()
        if s >= 2:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    n = sum(p.numel() for p in model.parameters())
    print(f"torch train step: {n/1e6:.2f} M params, experts {used}, batch {a.batch} x {a.seq}, {a.threads} threads: "
          f"median {med:.3f} s/step, {a.batch*a.seq/med:.0f} tokens/s")
    if gpu:
        print(f"torch peak memory {torch.cuda.max_memory_allocated() / 1e9:.1f} GB{' (compiled)' if a.compile else ''}")
    print(f"TORCH_TOKENS_PER_SECOND {a.batch*a.seq/med:.1f}")


if __name__ == "__main__":
    main()
