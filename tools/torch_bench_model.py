"""torch_bench_model.py — the transformers model the GPU benchmarks compare against (tools/torch_*_bench.py):
DeepseekV3ForCausalLM built from one of dseek's config.json files, random weights (seed 0), bf16, on the GPU,
in eval mode. Python is an outside reference only.
"""
import json

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM


def load_config(path):
    """The DeepseekV3Config of a dseek/HF config.json (fields transformers does not take dropped)."""
    cfg_json = json.load(open(path))
    return DeepseekV3Config(**{k: v for k, v in cfg_json.items() if k not in ("architectures", "torch_dtype")})


def random_bf16_model(path):
    """(config, model): random weights from seed 0, bf16 on the GPU, eval mode."""
    cfg = load_config(path)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = DeepseekV3ForCausalLM(cfg).to(torch.bfloat16).eval()
    return cfg, model
