#!/usr/bin/env python3
"""torch_prefill_bench.py — transformers' side of the GPU prefill comparison (scripts/bench-prefill-gpu).

DeepseekV3ForCausalLM from the given config with random bf16 weights on the GPU; one forward of a
[batch, seq] batch with the KV cache built and only the last position's logits kept (logits_to_keep=1),
as a server's prefill does. Prints tokens/s (median of --iters runs after a warm-up) and peak memory.
Python is an outside reference only.
"""
import argparse, time

import torch

from torch_bench_model import random_bf16_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    cfg, model = random_bf16_model(a.config)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device="cuda")
    times = []
    with torch.no_grad():
        for it in range(a.iters + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            if it > 0:
                times.append(time.perf_counter() - t0)
            del out
    times.sort()
    med = times[len(times) // 2]
    tps = a.batch * a.seq / med
    print(f"transformers prefill: batch {a.batch} x {a.seq}, median of {a.iters}: {med*1000:.2f} ms "
          f"({tps:.0f} tokens/s), peak memory {torch.cuda.max_memory_allocated()/1e9:.2f} GB")
    print(f"TORCH_PREFILL_TOKENS_PER_SECOND {tps:.1f}")


if __name__ == "__main__":
    main()
