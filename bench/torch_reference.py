"""PyTorch reference side of `npm run bench:engine` (started by bench/engine.ts, not by hand).

Reads the workload JSON the TypeScript bench wrote (prompt ids, pixels, token budget, threads),
rebuilds the PyTorch SQLLaVA from the bundle's ONNX initializers (the exporter keeps parameter
names, prefixed `m.`; fp16 files are widened to float32, which is exactly what the fp16 graphs
compute with), and runs the same workload as the other runtimes: image encode, prefill of the
describe prompt, and greedy decoding with the model's KV cache (EOS suppressed, a fixed number of
tokens) at several context lengths. Prints one JSON object on stdout.

    /usr/bin/python3 bench/torch_reference.py WORKLOAD.json
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_bundle_model(bundle_dir: Path):
    """SQLLaVA with the bundle's weights, config from model.json's provenance (or its preset)."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from training.sqllava.configs import PRESETS, config_from_dict
    from training.sqllava.model import SQLLaVA

    meta = json.loads((bundle_dir / "model.json").read_text())
    src = meta.get("source") or {}
    if "config" in src:
        cfg = config_from_dict(src["config"])
    elif src.get("preset") in PRESETS:
        cfg = PRESETS[src["preset"]]
    else:
        raise SystemExit(f"{bundle_dir}: model.json names neither source.config nor a known source.preset")
    model = SQLLaVA(cfg)
    dtype = meta["dtypes"][0]
    state = {}
    for key in ("vision", "embed", "decoder"):
        g = onnx.load(str(bundle_dir / meta[key]["files"][dtype]))
        for init in g.graph.initializer:
            if not init.name.startswith("m."):
                continue
            name = init.name[2:]
            if name.endswith("__fp16"):
                name = name[: -len("__fp16")]
            state[name] = torch.from_numpy(numpy_helper.to_array(init).astype(np.float32).copy())
    own = model.state_dict()
    # Parts no graph uses (CLIP layers past the selected one, post_layernorm, ...) stay random.
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise SystemExit(f"{bundle_dir}: initializers with no parameter: {unexpected[:5]}")
    # The ONNX exporter de-duplicates initializers with equal values (e.g. RMSNorm weights still at
    # their initial ones in a random model): a parameter without its own initializer is fine when
    # its initial value equals a kept one of the same shape (then the graph used exactly that).
    kept = list(state.values())
    for k, v in own.items():
        if k in state or k.startswith("model.vision_tower") or "mm_projector" in k:
            continue
        if not any(t.shape == v.shape and torch.equal(t, v) for t in kept):
            raise SystemExit(f"{bundle_dir}: bundle lacks {k}")
    model.load_state_dict(state, strict=False)
    return model.eval(), dtype


def main() -> int:
    work = json.loads(Path(sys.argv[1]).read_text())
    threads = int(work["threads"])
    t_import = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    bundle = Path(work["bundle"])
    t0 = time.perf_counter()
    model, dtype = load_bundle_model(bundle)
    load_ms = (time.perf_counter() - t0) * 1000
    import_ms = (t0 - t_import) * 1000
    eos = int(work["eos"])
    K = int(work["newTokens"])
    reps = int(work["reps"])
    S = int(work["imageSize"])
    pixels = np.fromfile(work["pixelsFile"], dtype=np.float32).reshape(1, 3, S, S)
    px = torch.from_numpy(pixels)

    def ids_tensor(ids):
        return torch.tensor([ids], dtype=torch.long)

    with torch.inference_mode():
        # -- image encode
        enc = []
        feats = None
        for _ in range(reps + 1):
            t = time.perf_counter()
            feats = model.encode_images(px)
            enc.append((time.perf_counter() - t) * 1000)
        enc = enc[1:]  # first run warms up

        def greedy(embeds: torch.Tensor, steps: int):
            """Prefill `embeds` [1,T,H], then `steps` greedy tokens; returns tokens, prefill ms, per-token times."""
            T = embeds.shape[1]
            t = time.perf_counter()
            logits, past = model.decode(embeds, torch.ones(1, T, dtype=torch.long), torch.arange(T).unsqueeze(0))
            last = logits[0, -1].clone()
            last[eos] = float("-inf")
            tok = int(torch.argmax(last))
            prefill_ms = (time.perf_counter() - t) * 1000
            stamps = [time.perf_counter()]
            tokens = [tok]
            pos = T
            while len(tokens) < steps:
                e = model.embed(ids_tensor([tok]))
                logits, past = model.decode(e, torch.ones(1, pos + 1, dtype=torch.long), torch.tensor([[pos]]), past)
                last = logits[0, -1].clone()
                last[eos] = float("-inf")
                tok = int(torch.argmax(last))
                tokens.append(tok)
                stamps.append(time.perf_counter())
                pos += 1
            return tokens, prefill_ms, stamps

        # -- describe prompt: text | image | text, prefill then greedy
        d = work["describe"]
        emb = torch.cat([model.embed(ids_tensor(d["before"]))[0], feats[0], model.embed(ids_tensor(d["after"]))[0]], 0).unsqueeze(0)
        prefills = []
        describe_tokens = None
        for _ in range(reps + 1):
            t = time.perf_counter()  # text embedding + splice + decoder pass + first token
            emb = torch.cat([model.embed(ids_tensor(d["before"]))[0], feats[0], model.embed(ids_tensor(d["after"]))[0]], 0).unsqueeze(0)
            toks, _, _ = greedy(emb, 1)
            prefills.append((time.perf_counter() - t) * 1000)
            describe_tokens = toks
        prefills = prefills[1:]
        describe_tokens, _, _ = greedy(emb, K)

        # -- decode at each context length (text-only prompt of exactly C tokens)
        contexts = []
        for c in work["contexts"]:
            per_tok = []
            tokens = None
            for r in range(reps + 1):
                e = model.embed(ids_tensor(c["ids"]))
                tokens, _, stamps = greedy(e, c["steps"])
                if r > 0:
                    per_tok.append((stamps[-1] - stamps[0]) * 1000 / (len(stamps) - 1))
            ms = statistics.median(per_tok)
            contexts.append({"context": c["context"], "steps": c["steps"], "msPerToken": ms, "tokensPerSecond": 1000 / ms, "tokens": tokens})

    positions = len(d["before"]) + feats.shape[1] + len(d["after"])
    pre_ms = statistics.median(prefills)
    out = {
        "runtime": "pytorch",
        "version": f"torch {torch.__version__}",
        "dtype": f"{dtype} weights widened to float32",
        "threads": threads,
        "loadMs": load_ms,
        "importMs": import_ms,
        "encodeMs": statistics.median(enc),
        "prefill": {"positions": positions, "ms": pre_ms, "tokensPerSecond": positions * 1000 / pre_ms},
        "describeTokens": describe_tokens,
        "contexts": contexts,
        "peakRssMB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
