#!/usr/bin/env python3
"""Full-size replicas of SmolLM2-135M and Qwen2.5-0.5B, and a check that cohort loads and runs
them as transformers does.

Nothing can be downloaded from the Hugging Face hub here, so this builds, with transformers,
models with the published configurations of HuggingFaceTB/SmolLM2-135M (LlamaForCausalLM) and
Qwen/Qwen2.5-0.5B (Qwen2ForCausalLM), randomly initialised from a seed, stored as the hub stores
them (bf16 safetensors, tied embeddings so no lm_head.weight; Qwen sharded with
model.safetensors.index.json; config.json with the hub's field names, rope_theta included), plus
a byte-level BPE tokenizer.json trained on Tiny Shakespeare. It records what transformers
computes (f32 on the bf16 weights): the logits of a fixed prompt, the greedy continuation, and
loss/accuracy on fixed windows. `compare` then runs the cohort binary on the same directories and
checks the continuation text and the loss, and measures load time, peak RSS and tokens/s.

    /work/venv-torch/bin/python3 bench/hf_replica.py make --out /work/hf-replicas
    /work/venv-torch/bin/python3 bench/hf_replica.py compare --out /work/hf-replicas \
        --cohort /work/target-cuda/release/cohort --json /work/hf-replicas/results.json

Needs torch, transformers (5.x), tokenizers, safetensors. The directories take about 1.3 GB.
"""
import argparse
import json
import os
import subprocess
import sys
import time

CORPUS_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                              "tinyshakespeare", "input.txt")
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"
SEED = 1234

# The hub's config.json files (HuggingFaceTB/SmolLM2-135M, Qwen/Qwen2.5-0.5B), field for field.
CONFIGS = {
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 576,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536,
        "is_llama_config": True,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_interleaved": False,
        "rope_scaling": None,
        "rope_theta": 100000,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_cache": True,
        "vocab_size": 49152,
    },
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "hidden_act": "silu",
        "hidden_size": 896,
        "initializer_range": 0.02,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "model_type": "qwen2",
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_cache": True,
        "use_mrope": False,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
}
# Special tokens, at the ids the real tokenizers give them (SmolLM2: first; Qwen2.5: after BPE).
SPECIALS = {
    "smollm2-135m": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "qwen2.5-0.5b": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}
SHARD = {"qwen2.5-0.5b": "300MB"}  # Qwen2.5-0.5B is one file on the hub; sharded here on purpose
EVAL = {"seq": 128, "batch": 4, "windows": 8}


def train_tokenizer(name, corpus, vocab):
    """A byte-level BPE trained on the corpus up to the model's vocabulary (a 1 MB corpus runs out
    of merges first), then padded with plain added tokens `<|pad{id}|>` so that every id the
    model can emit decodes to distinct text (a random model emits ids the BPE never made)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = SPECIALS[name]
    first = name == "smollm2-135m"
    trainer = trainers.BpeTrainer(vocab_size=vocab - (0 if first else len(specials)),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=specials if first else [], show_progress=False)
    with open(corpus, encoding="utf-8") as f:
        text = f.read()
    tok.train_from_iterator([text], trainer)
    bpe = tok.get_vocab_size()
    if not first:
        tok.add_special_tokens(specials)
    pad = vocab - tok.get_vocab_size()
    tok.add_tokens([f"<|pad{tok.get_vocab_size() + i}|>" for i in range(pad)])
    assert tok.get_vocab_size() == vocab, (tok.get_vocab_size(), vocab)
    return tok, bpe


def make(args):
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    with open(args.corpus, encoding="utf-8") as f:
        text = f.read()
    eval_text = text[int(len(text) * 0.9):]
    with open(os.path.join(args.out, "eval.txt"), "w", encoding="utf-8") as f:
        f.write(eval_text)
    for name in args.models.split(","):
        cfg_dict = CONFIGS[name]
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        t0 = time.time()
        tok, bpe = train_tokenizer(name, args.corpus, cfg_dict["vocab_size"])
        tok.save(os.path.join(d, "tokenizer.json"))
        t_tok = time.time() - t0

        torch.manual_seed(SEED)
        cfg = transformers.AutoConfig.for_model(**cfg_dict)
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        if name.startswith("qwen"):
            # transformers initialises biases to zero; the real q/k/v biases are not, and a zero
            # bias would not test them.
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n.endswith("bias"):
                        p.normal_(0, 0.5)
        model = model.to(torch.bfloat16).eval()
        kw = {"max_shard_size": SHARD[name]} if name in SHARD else {}
        model.save_pretrained(d, **kw)
        del model
        # The hub's config.json (transformers 5 would write rope_parameters, dtype, ...).
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg_dict, f, indent=2)
            f.write("\n")
        t_save = time.time() - t0 - t_tok

        # The reference: transformers in f32 on the saved bf16 weights, loaded as a user would.
        t1 = time.time()
        model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        t_load = time.time() - t1
        n_params = sum(p.numel() for p in model.parameters())
        ids = tok.encode(PROMPT).ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
            seq = list(ids)
            past = None
            t2 = time.time()
            out = model(torch.tensor([seq]), use_cache=True)
            for _ in range(args.max_new):
                nxt = int(out.logits[0, -1].argmax())
                seq.append(nxt)
                out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
            t_gen = time.time() - t2

            eids = tok.encode(eval_text).ids
            n = min((len(eids) - 1) // EVAL["seq"], EVAL["windows"])
            loss_sum, correct, count = 0.0, 0, 0
            for s0 in range(0, n, EVAL["batch"]):
                starts = [i * EVAL["seq"] for i in range(s0, min(n, s0 + EVAL["batch"]))]
                x = torch.tensor([eids[s:s + EVAL["seq"]] for s in starts])
                y = torch.tensor([eids[s + 1:s + EVAL["seq"] + 1] for s in starts])
                lg = model(x).logits.float().reshape(-1, cfg_dict["vocab_size"])
                loss_sum += float(torch.nn.functional.cross_entropy(lg, y.reshape(-1), reduction="sum"))
                correct += int((lg.argmax(-1) == y.reshape(-1)).sum())
                count += y.numel()

        def pick(row):
            top = torch.topk(row, 5)
            return {"top5_ids": top.indices.tolist(), "top5_logits": top.values.tolist(),
                    "logits_0_4": row[:5].tolist(), "mean": float(row.mean()), "std": float(row.std())}

        files = sorted(os.listdir(d))
        ref = {
            "name": name, "dir": d, "seed": SEED, "params": n_params,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "files": {f: os.path.getsize(os.path.join(d, f)) for f in files},
            "tokenizer_bpe_tokens": bpe, "tokenizer_tokens": tok.get_vocab_size(),
            "prompt": PROMPT, "prompt_ids": ids, "max_new": args.max_new,
            "logits_first": pick(logits[0]), "logits_last": pick(logits[-1]),
            "greedy_ids": seq[len(ids):],
            "greedy_text": tok.decode(seq, skip_special_tokens=False),
            "eval": {**EVAL, "windows_used": n, "tokens": count, "loss": loss_sum / count,
                     "accuracy": correct / count},
            "torch_seconds": {"tokenizer_train": t_tok, "init_and_save": t_save, "load_f32": t_load,
                              "greedy": t_gen, "threads": args.threads},
            "torch_greedy_tokens_per_s": args.max_new / t_gen,
        }
        with open(os.path.join(args.out, f"{name}.reference.json"), "w") as f:
            json.dump(ref, f, indent=1)
        print(f"{name}: {n_params:,} parameters, files {files}, BPE {bpe} + pad -> {tok.get_vocab_size()} tokens, "
              f"greedy {ref['greedy_ids'][:8]}..., eval loss {ref['eval']['loss']:.5f}, "
              f"torch greedy {ref['torch_greedy_tokens_per_s']:.1f} tok/s", flush=True)
        del model


def timed(cmd):
    """cmd under /usr/bin/time: stdout, wall seconds, peak RSS in bytes."""
    import tempfile
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-o", tf.name, "-f", "%e %M"] + cmd
        t = time.time()
        p = subprocess.run(full, capture_output=True, text=True)
        wall = time.time() - t
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
        e, m = tf.read().split()[-2:]
    return p.stdout, wall, int(m) * 1024


def torch_greedy_speed(d, ids, n, threads):
    """transformers' greedy tokens/s on a directory (f32, KV cache, prompt included), for the
    same-run comparison with cohort."""
    import torch
    import transformers
    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        t = time.time()
        out = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            nxt = out.logits[0, -1].argmax().view(1, 1)
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
        dt = time.time() - t
    del model
    return n / dt


def compare(args):
    results = []
    ok_all = True
    env_threads = os.environ.get("RAYON_NUM_THREADS")
    for name in args.models.split(","):
        with open(os.path.join(args.out, f"{name}.reference.json")) as f:
            ref = json.load(f)
        d = os.path.join(args.out, name)
        c = args.cohort
        gen = [c, "model", "generate", d, "--prompt", PROMPT]
        # load (+ tokenise, decode): no new tokens. The first run reads the files from disk (cold
        # page cache); the figures use the second.
        _, wall_cold, _ = timed(gen + ["--max-new", "0"])
        out0, wall0, rss0 = timed(gen + ["--max-new", "0"])
        out, wall, rss = timed(gen + ["--max-new", str(ref["max_new"])])
        text = out[:-1] if out.endswith("\n") else out
        same = text == ref["greedy_text"]
        first_diff = None
        if not same:
            first_diff = next((i for i, (a, b) in enumerate(zip(text, ref["greedy_text"])) if a != b),
                              min(len(text), len(ref["greedy_text"])))
        torch_tps = torch_greedy_speed(d, ref["prompt_ids"], ref["max_new"], args.threads)
        e = ref["eval"]
        ev_out, ev_wall, ev_rss = timed([c, "model", "eval", d, "--data", os.path.join(args.out, "eval.txt"),
                                         "--seq-len", str(e["seq"]), "--batch", str(e["batch"]),
                                         "--max-windows", str(e["windows"]), "--json"])
        ev = json.loads(ev_out)
        loss_diff = abs(ev["loss"] - e["loss"])
        ok = same and ev["tokens"] == e["tokens"] and loss_diff < 1e-3 and abs(ev["accuracy"] - e["accuracy"]) < 1e-3
        ok_all &= ok
        gen_s = wall - wall0
        r = {
            "name": name, "params": ref["params"],
            "greedy_text_matches": same, "first_diff_char": first_diff,
            "cohort_text": text if not same else None, "reference_text": ref["greedy_text"] if not same else None,
            "max_new": ref["max_new"],
            "load_seconds_cold": wall_cold, "load_seconds": wall0, "load_peak_rss_bytes": rss0,
            "generate_seconds": wall, "generate_peak_rss_bytes": rss,
            "tokens_per_s": ref["max_new"] / gen_s if gen_s > 0 else None,
            "torch_tokens_per_s": torch_tps, "torch_threads": args.threads,
            "eval_cohort": ev, "eval_transformers": e, "eval_loss_abs_diff": loss_diff,
            "eval_seconds": ev_wall, "eval_peak_rss_bytes": ev_rss,
            "rayon_threads": env_threads, "ok": ok,
        }
        results.append(r)
        print(f"{name}: greedy text {'MATCHES' if same else 'DIFFERS at char %s' % first_diff}; "
              f"eval loss cohort {ev['loss']:.6f} vs transformers {e['loss']:.6f} (|diff| {loss_diff:.2e}), "
              f"accuracy {ev['accuracy']:.4f} vs {e['accuracy']:.4f}; load {wall0:.2f} s, peak RSS "
              f"{rss / 2**20:.0f} MiB, {r['tokens_per_s'] or float('nan'):.1f} tok/s (transformers {torch_tps:.1f} right after)",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if ok_all else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["make", "compare", "all"])
    ap.add_argument("--out", default="/work/hf-replicas")
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b")
    ap.add_argument("--corpus", default=os.path.normpath(CORPUS_DEFAULT))
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cohort", help="the cohort binary (compare)")
    ap.add_argument("--json", help="write compare's results here")
    args = ap.parse_args()
    if args.cmd in ("make", "all"):
        make(args)
    if args.cmd in ("compare", "all"):
        if not args.cohort:
            ap.error("compare needs --cohort")
        return compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
