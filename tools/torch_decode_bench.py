#!/usr/bin/env python3
"""torch_decode_bench.py — transformers' side of the GPU decode comparison (scripts/bench-decode-gpu).

DeepseekV3ForCausalLM from bench/configs/bench-1b.json with random bf16 weights on the GPU; greedy
`generate` of --new tokens after a --prompt-token prompt, batch --batch; prints tokens/s (new tokens per
second of the decode phase, prefill timed separately and subtracted). Python is an outside reference only.
"""
import argparse, time

import torch

from torch_bench_model import random_bf16_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    cfg, model = random_bf16_model(a.config)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.prompt), device="cuda")
    gen = dict(do_sample=False, pad_token_id=cfg.eos_token_id, eos_token_id=None)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=a.new, min_new_tokens=a.new, **gen)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
    new = out.shape[1] - a.prompt
    tps = a.batch * (new - 1) / (total - prefill)
    print(f"transformers decode: batch {a.batch}, {new} new tokens after {a.prompt}: {tps:.1f} tokens/s "
          f"(prefill {prefill*1000:.0f} ms)")
    print(f"TORCH_DECODE_TOKENS_PER_SECOND {tps:.2f}")


if __name__ == "__main__":
    main()
