#!/usr/bin/env python3
"""The reference model of `cohort bench train` in PyTorch on CPU, for comparison.

GPT decoder (learned positions, pre-norm LayerNorm, tanh GELU, tied embeddings, as
`cohort-model`'s `Gpt`): vocabulary 65, context 128, d_model 256, 4 layers, 4 heads, MLP 4x,
batch 16, AdamW, f32, 2 threads. Prints tokens/s for full training and for LoRA (rank 8 on
every linear layer, base frozen) as the median of timed steps after warm-up, and writes JSON.

    python3 bench/torch_reference.py --json torch.json

`cohort bench train --torch python3` runs this right after its own measurement.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(False)
        self.a = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.a.t() @ self.b.t()) * self.scale


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab=65, ctx=128, d=256, layers=4, heads=4):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for blk in self.h:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def add_lora(model, r):
    for p in model.parameters():
        p.requires_grad_(False)
    for blk in model.h:
        for name in ("c_attn", "c_proj", "c_fc", "mlp_proj"):
            setattr(blk, name, LoRALinear(getattr(blk, name), r, 2.0 * r))


def time_steps(model, batch, seq, warmup, steps):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    times = []
    for i in range(warmup + steps):
        x = torch.randint(0, 65, (batch, seq), generator=g)
        y = torch.randint(0, 65, (batch, seq), generator=g)
        s = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - s)
    return statistics.median(times)


def matmul_peak():
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(6):
        s = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - s)
    return 2 * n**3 / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    seq = 128
    full = time_steps(GPT(), a.batch, seq, a.warmup, a.steps)
    m = GPT()
    add_lora(m, a.rank)
    lora = time_steps(m, a.batch, seq, a.warmup, a.steps)
    tok = a.batch * seq
    out = {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "full_tokens_per_s": tok / full,
        "lora_tokens_per_s": tok / lora,
        "matmul_peak_gflops": matmul_peak(),
    }
    print(f"pytorch {out['torch_version']} ({out['threads']} threads): full {out['full_tokens_per_s']:.0f} tokens/s, "
          f"LoRA r{a.rank} {out['lora_tokens_per_s']:.0f} tokens/s, matmul peak {out['matmul_peak_gflops']:.0f} GFLOP/s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
