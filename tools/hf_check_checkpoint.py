#!/usr/bin/env python3
"""hf_check_checkpoint.py CKPT_DIR INPUT_IDS.safetensors DSEEK_LOGITS.safetensors

Loads a dseek training checkpoint with transformers' DeepseekV3ForCausalLM.from_pretrained (float32),
runs it on input_ids, and compares its logits with the ones `dseek logits` wrote for the same input:
prints max |Δ| and ‖Δ‖/‖ref‖, exit 1 when the relative difference exceeds 1e-4. Python is an outside
reference only; dseek never needs it.
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    ckpt, ids_path, dseek_path = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model.eval()
    ids = load_file(ids_path)["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
    got = load_file(dseek_path)["logits"].float()
    d = (got - ref)
    rel = (d.norm() / ref.norm()).item()
    print(f"transformers {type(model).__name__} loaded {ckpt}: logits {tuple(ref.shape)}, "
          f"max|Δ| = {d.abs().max().item():.3e}, ‖Δ‖/‖ref‖ = {rel:.3e}")
    sys.exit(0 if rel <= 1e-4 else 1)


if __name__ == "__main__":
    main()
