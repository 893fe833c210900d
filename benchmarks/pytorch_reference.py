"""Plain PyTorch eager Llama-style decoder: the CPU bar for benchmarks/train_throughput.py
(training steps) and, with --mode=decode, for benchmarks/bench_rollouts.py (KV-cache rollouts).

Same model as ehr_jax.model.transformer (RMSNorm, rotate-half RoPE, SwiGLU, causal SDPA, untied
head, no biases), same step (forward, backward, global-norm clip 1.0, AdamW), random tokens,
batch 16 x seq 256, float32. FLOPs use the study's convention (ehr_jax.model.sizes: 3 x forward
matmul FLOPs, causal attention at half), so GFLOP/s compare directly with ours.

torch is NOT a dependency of ehr-jax; install it into a separate venv for this benchmark only:

  python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch==2.13.0 numpy
  /tmp/torchref/bin/python benchmarks/pytorch_reference.py --sizes=d320-l6,ref11m --steps=4
  /tmp/torchref/bin/python benchmarks/pytorch_reference.py --mode=decode --sizes=d32-l1,d64-l2 \
      --vocab=1024 --threads=2     # rollouts: the same shape as benchmarks/bench_rollouts.py

Sizes: ladder names dD-lN (d_ff and heads as ehr_jax.model.sizes derives them, head_dim 64) and
"ref11m" (d384-l6 with d_ff 896 and vocab 2048: 11.3M parameters, about the "11.2M eager
decoder" the team was quoted). The machine is shared, so compare by running this and
benchmarks/train_throughput.py alternately for a few rounds (docs/PERFORMANCE.md, "Side by side").
"""

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

# ehr_jax.model.sizes is plain Python (no JAX): read the ladder from the checkout, not a copy.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ehr_jax.model import sizes  # noqa: E402

import machine  # noqa: E402  (benchmarks/, this script's own folder)

REF_11M = (384, 6, 64, 896)  # d_model, n_layers, head_dim, d_ff -> 11,309,952 params at V=2048


def ladder_shape(name: str) -> tuple[int, int, int, int]:
    """(d_model, n_layers, head_dim, d_ff) for "ref11m" or a name on ehr-jax's size ladder."""
    if name == "ref11m":
        return REF_11M
    size = sizes.get_size(name)
    return size.d_model, size.n_layers, size.head_dim, size.d_ff


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, head_dim: int, d_ff: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.wq = nn.Linear(d, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(d, n_heads * head_dim, bias=False)
        self.wv = nn.Linear(d, n_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, d, bias=False)
        self.w_gate = nn.Linear(d, d_ff, bias=False)
        self.w_up = nn.Linear(d, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x, cos, sin):
        b, length, _ = x.shape
        h = self.attn_norm(x)
        q, k, v = (w(h).view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
                   for w in (self.wq, self.wk, self.wv))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(o.transpose(1, 2).reshape(b, length, -1))
        h = self.mlp_norm(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


class Decoder(nn.Module):
    def __init__(self, vocab: int, d: int, n_layers: int, head_dim: int, d_ff: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(
            [Block(d, d // head_dim, head_dim, d_ff) for _ in range(n_layers)])
        self.final_norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head_dim = head_dim

    def rope(self, length: int):
        inv_freq = 10_000.0 ** (-torch.arange(0, self.head_dim, 2).float() / self.head_dim)
        angles = torch.arange(length).float()[:, None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, tokens):
        cos, sin = self.rope(tokens.shape[1])
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.final_norm(x))


def flops_per_token(d: int, n_layers: int, head_dim: int, d_ff: int, vocab: int, seq: int):
    """The study's convention (ehr_jax.model.sizes.flops_per_token), full multi-head attention."""
    block = 4 * d * d + 3 * d * d_ff
    n_heads = d // head_dim
    forward = 2 * n_layers * block + 2 * d * vocab + n_layers * 2 * seq * n_heads * head_dim
    return 3.0 * forward


def machine_line() -> str:
    return (f"{machine.describe()}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def measure(name: str, args) -> dict:
    """Two warm-up steps, then the mean of `steps` timed steps."""
    torch.manual_seed(0)
    d, n_layers, head_dim, d_ff = ladder_shape(name)
    model = Decoder(args.vocab, d, n_layers, head_dim, d_ff)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    tokens = torch.randint(4, args.vocab, (args.batch, args.seq_len + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    step_s = (time.perf_counter() - start) / args.steps
    tokens_per_step = args.batch * args.seq_len
    flops = flops_per_token(d, n_layers, head_dim, d_ff, args.vocab, args.seq_len)
    return {"size": name, "n_params": sum(p.numel() for p in model.parameters()),
            "step_s": step_s, "tokens_per_s": tokens_per_step / step_s,
            "gflops_per_s": tokens_per_step * flops / step_s / 1e9, "loss": loss.item()}


def decode(name: str, args) -> dict:
    """KV-cache rollouts of the shape benchmarks/bench_rollouts.py times: `cases` prompts of
    prompt_len tokens prefilled once, each copied to `rollouts` samples, then new_tokens decode
    steps over a ring buffer of prompt_len slots (every slot valid, as in ehr-jax's sampler),
    sampling from the softmax. Eager PyTorch, inference_mode, float32."""
    torch.manual_seed(0)
    d, n_layers, head_dim, d_ff = ladder_shape(name)
    model = Decoder(args.vocab, d, n_layers, head_dim, d_ff).eval()
    n_heads, window = d // head_dim, args.prompt_len
    prompts = torch.randint(4, args.vocab, (args.cases, window))
    inv_freq = 10_000.0 ** (-torch.arange(0, head_dim, 2).float() / head_dim)

    def rope_at(positions):  # [B] or [L] -> cos, sin broadcastable to [B, H, L, hd]
        angles = positions.float()[:, None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def run() -> tuple[int, float, float]:
        start = time.perf_counter()
        cos, sin = rope_at(torch.arange(window))
        x = model.embed(prompts)
        caches = []
        for block in model.blocks:  # prefill: the block's forward, keeping its keys and values
            h = block.attn_norm(x)
            q, k, v = (w(h).view(args.cases, window, n_heads, head_dim).transpose(1, 2)
                       for w in (block.wq, block.wk, block.wv))
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + block.wo(o.transpose(1, 2).reshape(args.cases, window, -1))
            h = block.mlp_norm(x)
            x = x + block.w_down(F.silu(block.w_gate(h)) * block.w_up(h))
            caches.append([k.repeat_interleave(args.rollouts, 0).contiguous(),
                           v.repeat_interleave(args.rollouts, 0).contiguous()])
        logits = model.head(model.final_norm(x[:, -1])).repeat_interleave(args.rollouts, 0)
        prefill_s = time.perf_counter() - start
        n = args.cases * args.rollouts
        for step in range(args.new_tokens):
            token = torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]
            cos, sin = rope_at(torch.full((1,), window + step))
            x = model.embed(token)[:, None]
            slot = (window + step) % window
            for block, cache in zip(model.blocks, caches):
                h = block.attn_norm(x)
                q, k, v = (w(h).view(n, 1, n_heads, head_dim).transpose(1, 2)
                           for w in (block.wq, block.wk, block.wv))
                q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
                cache[0][:, :, slot] = k[:, :, 0]
                cache[1][:, :, slot] = v[:, :, 0]
                o = F.scaled_dot_product_attention(q, cache[0], cache[1])
                x = x + block.wo(o.transpose(1, 2).reshape(n, 1, -1))
                h = block.mlp_norm(x)
                x = x + block.w_down(F.silu(block.w_gate(h)) * block.w_up(h))
            logits = model.head(model.final_norm(x[:, 0]))
        return n * args.new_tokens, prefill_s, time.perf_counter() - start

    with torch.inference_mode():
        run()  # warm-up
        generated, prefill_s, total_s = run()
    return {"size": name, "generated_tok_s": generated / total_s, "total_s": total_s,
            "prefill_share": prefill_s / total_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("train", "decode"), default="train")
    parser.add_argument("--sizes", default="d320-l6,ref11m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--cases", type=int, default=16, help="decode: prompts per batch")
    parser.add_argument("--rollouts", type=int, default=20, help="decode: samples per prompt")
    parser.add_argument("--prompt_len", type=int, default=128, help="decode: prompt and ring window")
    parser.add_argument("--new_tokens", type=int, default=128, help="decode: steps per rollout")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    if args.mode == "decode":
        print(f"decode: {args.cases} cases x {args.rollouts} rollouts, prompt {args.prompt_len}, "
              f"{args.new_tokens} new tokens, vocab {args.vocab}, float32, eager, KV cache")
        for name in args.sizes.split(","):
            r = decode(name, args)
            print(f"{r['size']:>9}: generated {r['generated_tok_s']:,.0f} tok/s ({r['total_s']:.2f}s, "
                  f"prefill {100 * r['prefill_share']:.0f}%), load {os.getloadavg()[0]:.1f}", flush=True)
        return
    print(f"batch {args.batch} x seq {args.seq_len}, vocab {args.vocab}, float32, AdamW, eager")
    print(f"{'size':>9} {'params':>11} {'step ms':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'load':>5}")
    for name in args.sizes.split(","):
        r = measure(name, args)
        print(f"{r['size']:>9} {r['n_params']:>11,} {1e3 * r['step_s']:>8.1f} "
              f"{r['tokens_per_s']:>9,.0f} {r['gflops_per_s']:>8.1f} "
              f"{os.getloadavg()[0]:>5.1f}", flush=True)


if __name__ == "__main__":
    main()
