"""Evaluates the micro SQ-LLaVA on fresh shapes-world scenes (a seed range never trained on).

    /usr/bin/python3 -m training.evaluate --model models/sq-llava-micro
    /usr/bin/python3 -m training.evaluate --model models/sq-llava-micro --scenes 300 \\
        --ablation "w/o self-questioning=runs/micro-no_sq/final.pt" \\
        --ablation "w/o prototype extractor=runs/micro-no_proto/final.pt"

Per model (like Table 3 of the paper, on the world of /work/shared/WORLD.md):
  caption     brief caption (v1, greedy) names every object's colour and shape, nothing invented
  answer      one question per form per scene (v1, greedy), overall and per form
  SQ valid    v1_sq as /quiz does it: detailed description (greedy), then 5 sampled `VUSER:`
              questions (temperature 1.2, top-k 300, top-p 0.95): one of the question forms'
              phrasings, about objects in the scene
  diversity   distinct questions among the 5 samples of a scene (mean, as a % of 5)
  SQ answer   the model's own greedy answer (` ASSISTANT:` after the question) to each valid
              self-question is correct
A bundle folder is evaluated on the weights it ships (fp16, read from its ONNX files); a
training checkpoint (final.pt) is evaluated with its weights rounded to fp16 the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from training.bundle import load_any
from training.data import preprocess_image, scene_text
from training.export import fp16_rounded
from training.sqllava.conversation import SYSTEM_V1, SYSTEM_V1_SQ
from training.sqllava.model import SQLLaVA
from training.sqllava.tokenizer import LlamaTokenizer
from training.world.language import (BRIEF_PROMPT, DETAILED_PROMPT, FORMS, answer_correct, answer_for,
                                     caption_correct, parse_question, question_validity, sample_question)
from training.world.render import render_augmented
from training.world.scene import Scene, scene_for

EOS = 2


# ----------------------------------------------------------------------------- batched generation

class Session:
    """A batch of sequences decoded together with one KV cache. Rows may hold holes (mask 0)
    where shorter rows were padded; position ids count real tokens only."""

    def __init__(self, model: SQLLaVA, rows: List[torch.Tensor]):
        self.model = model
        b = len(rows)
        t = max(r.shape[0] for r in rows)
        h = rows[0].shape[1]
        emb = rows[0].new_zeros(b, t, h)
        mask = torch.zeros(b, t, dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            emb[i, t - r.shape[0]:] = r
            mask[i, t - r.shape[0]:] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        logits, self.past = model.decode(emb, mask, pos, logits_for=self._last(mask))
        self.mask = mask
        self.next_pos = mask.sum(1)
        self.logits = logits  # [B,V] next-token logits per row

    @staticmethod
    def _last(mask):
        lf = torch.zeros_like(mask, dtype=torch.bool)
        lf[:, -1] = True
        return lf

    def repeat(self, k: int) -> "Session":
        s = object.__new__(Session)
        s.model = self.model
        s.past = [(a.repeat_interleave(k, 0), b.repeat_interleave(k, 0)) for a, b in self.past]
        s.mask = self.mask.repeat_interleave(k, 0)
        s.next_pos = self.next_pos.repeat_interleave(k, 0)
        s.logits = self.logits.repeat_interleave(k, 0)
        return s

    def _step(self, emb: torch.Tensor, new_mask: torch.Tensor) -> torch.Tensor:
        pos = self.next_pos[:, None] + (new_mask.cumsum(1) - 1).clamp(min=0)
        mask = torch.cat([self.mask, new_mask], 1)
        lf = torch.ones_like(new_mask, dtype=torch.bool)
        logits, self.past = self.model.decode(emb, mask, pos, self.past, logits_for=lf)
        self.mask = mask
        self.next_pos = self.next_pos + new_mask.sum(1)
        return logits.view(emb.shape[0], emb.shape[1], -1)

    def append(self, tokens: List[List[int]]):
        """Feeds each row its tokens (rows padded on the right with holes)."""
        b = len(tokens)
        t = max(1, max(len(x) for x in tokens))
        ids = torch.zeros(b, t, dtype=torch.long)
        m = torch.zeros(b, t, dtype=torch.long)
        for i, x in enumerate(tokens):
            ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
            m[i, :len(x)] = 1
        logits = self._step(self.model.embed(ids), m)
        for i, x in enumerate(tokens):
            if x:
                self.logits[i] = logits[i, len(x) - 1]

    def generate(self, max_new: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 gen: Optional[torch.Generator] = None) -> List[List[int]]:
        """Tokens per row up to and including EOS (which stays in the cache)."""
        b = self.logits.shape[0]
        out: List[List[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool)
        for _ in range(max_new):
            nxt = pick(self.logits, temperature, top_k, top_p, gen)
            for i in range(b):
                if not done[i]:
                    out[i].append(int(nxt[i]))
            live = (~done).long()[:, None]
            done = done | (nxt == EOS)
            logits = self._step(self.model.embed(nxt[:, None]), live)
            keep = live[:, 0].bool()
            self.logits[keep] = logits[keep, 0]
            if bool(done.all()):
                break
        return out


def pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
         gen: Optional[torch.Generator]) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    x = logits.float() / temperature
    if top_k and top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        srt, idx = x.sort(dim=-1, descending=True)
        probs = srt.softmax(-1)
        cum = probs.cumsum(-1)
        remove = cum - probs > top_p  # keep the smallest prefix reaching top_p
        srt = srt.masked_fill(remove, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, idx, srt)
    return torch.multinomial(x.softmax(-1), 1, generator=gen)[:, 0]


# ----------------------------------------------------------------------------- prompts

class Prompter:
    """Builds prompts for scenes given as image features (`feats`, the encoded images) or, for
    the decoder alone, as text (`contexts`, tokenised with the question as the language stage does)."""

    def __init__(self, model: SQLLaVA, tok: LlamaTokenizer, feats: Optional[torch.Tensor] = None,
                 contexts: Optional[List[str]] = None):
        self.model, self.tok, self.feats, self.contexts = model, tok, feats, contexts

    def rest_ids(self, text: str) -> List[int]:
        return self.tok.encode(text, add_bos=True)[1:]

    def rows(self, system: str, scenes: Sequence[int], questions: Sequence[str]) -> List[torch.Tensor]:
        """`{system} USER: <image>\\n{Q} ASSISTANT:` as embeddings, one row per (scene, question)."""
        first = torch.tensor(self.tok.encode(system + " USER: ", add_bos=True))
        fe = self.model.embed(first[None])[0]
        rows = []
        for i, q in zip(scenes, questions):
            scene = [] if self.contexts is not None else [self.feats[i]]
            context = self.contexts[i] if self.contexts is not None else ""
            rest = self.model.embed(torch.tensor(self.rest_ids(context + "\n" + q + " ASSISTANT:"))[None])[0]
            rows.append(torch.cat([fe, *scene, rest]))
        return rows

    def text(self, ids: List[int]) -> str:
        return self.tok.decode([i for i in ids if i != EOS]).strip()


def chunks(n: int, size: int):
    for i in range(0, n, size):
        yield range(i, min(n, i + size))


# ----------------------------------------------------------------------------- evaluation

def evaluate_model(model: SQLLaVA, tok: LlamaTokenizer, scenes: List[Scene], images: Optional[torch.Tensor], *,
                   n_sq: int = 5, batch: int = 48, seed: int = 0, log=print, examples: int = 0, sq: bool = True,
                   contexts: Optional[List[str]] = None) -> Dict:
    """The numbers of the module docstring. With `contexts` (and `images` None) each scene reaches
    the decoder as that text instead of an image."""
    torch.manual_seed(seed)
    n = len(scenes)
    res: Dict = {}
    t0 = time.time()
    with torch.no_grad():
        feats = None if contexts is not None else \
            torch.cat([model.encode_images(images[r.start:r.stop]) for r in chunks(n, 64)])
        p = Prompter(model, tok, feats, contexts)

        # 1. brief captions
        caps = []
        for r in chunks(n, batch):
            s = Session(model, p.rows(SYSTEM_V1, r, [BRIEF_PROMPT] * len(r)))
            caps += [p.text(x) for x in s.generate(64)]
        cap_ok = [caption_correct(sc, c) for sc, c in zip(scenes, caps)]
        res["caption"] = 100.0 * sum(cap_ok) / n
        log(f"    captions: {res['caption']:.1f}% ({time.time() - t0:.0f}s)")

        # 2. one question per form per scene
        qs = []
        for i, sc in enumerate(scenes):
            rng = random.Random(seed * 7919 + i)
            for f in FORMS:
                try:
                    qs.append((i, sample_question(sc, rng, f)))
                except RuntimeError:  # e.g. no unique shape to ask the colour of
                    pass
        ok_by_form: Dict[str, List[bool]] = defaultdict(list)
        answers, answer_ok = [], []
        for r in chunks(len(qs), batch):
            part = [qs[j] for j in r]
            s = Session(model, p.rows(SYSTEM_V1, [i for i, _ in part], [q.text for _, q in part]))
            outs = s.generate(48)
            for (i, q), o in zip(part, outs):
                a = p.text(o)
                answers.append(a)
                answer_ok.append(answer_correct(q.form, q.key, a))
                ok_by_form[q.form].append(answer_ok[-1])
        res["answer_by_form"] = {f: 100.0 * sum(v) / len(v) for f, v in ok_by_form.items()}
        allok = [x for v in ok_by_form.values() for x in v]
        res["answer"] = 100.0 * sum(allok) / len(allok)
        log(f"    answers: {res['answer']:.1f}% ({time.time() - t0:.0f}s)")
        if examples:
            res["examples"] = {
                "captions": [{"scene": i, "caption": caps[i], "ok": cap_ok[i]} for i in range(min(examples, n))],
                "answers": [{"scene": qs[j][0], "question": qs[j][1].text, "answer": answers[j], "form": qs[j][1].form,
                             "ok": answer_ok[j]} for j in range(min(examples * 2, len(qs)))]}

        # 3. self-questioning, as /quiz: detailed description, then VUSER samples, then answers
        if not sq:
            res.update(sq_valid=float("nan"), diversity=float("nan"), sq_answer=float("nan"), seconds=time.time() - t0)
            return res
        gen = torch.Generator().manual_seed(seed)
        valid, distinct, sq_ok, forms_seen = [], [], [], defaultdict(int)
        sq_examples = []
        vuser = p.rest_ids("VUSER:")
        assistant = p.rest_ids(" ASSISTANT:")
        for r in chunks(n, max(1, batch // n_sq)):
            s = Session(model, p.rows(SYSTEM_V1_SQ, r, [DETAILED_PROMPT] * len(r)))
            desc = s.generate(96)
            # generated tokens (their EOS included) are already in the cache
            s.append([([] if d and d[-1] == EOS else [EOS]) + vuser for d in desc])
            s = s.repeat(n_sq)
            q_ids = s.generate(48, temperature=1.2, top_k=300, top_p=0.95, gen=gen)
            s.append([([] if q and q[-1] == EOS else [EOS]) + assistant for q in q_ids])
            a_ids = s.generate(48)
            for k, i in enumerate(r):
                texts = []
                for j in range(n_sq):
                    row = k * n_sq + j
                    qt, at = p.text(q_ids[row]), p.text(a_ids[row])
                    texts.append(qt)
                    v, form, _ = question_validity(scenes[i], qt)
                    valid.append(v)
                    if v:
                        forms_seen[form] += 1
                        f2, slots = parse_question(qt)
                        _, key = answer_for(scenes[i], f2, slots)
                        sq_ok.append(answer_correct(f2, key, at))
                    if len(sq_examples) < examples:
                        sq_examples.append({"scene": i, "description": p.text(desc[k]), "question": qt,
                                            "valid": v, "answer": at})
                distinct.append(len(set(texts)) / n_sq)
        res["sq_valid"] = 100.0 * sum(valid) / len(valid)
        res["diversity"] = 100.0 * sum(distinct) / len(distinct)
        res["sq_answer"] = 100.0 * sum(sq_ok) / len(sq_ok) if sq_ok else 0.0
        res["sq_forms"] = dict(forms_seen)
        log(f"    self-questions: valid {res['sq_valid']:.1f}%, diversity {res['diversity']:.1f}%, "
            f"self-answers {res['sq_answer']:.1f}% ({time.time() - t0:.0f}s)")
    res["seconds"] = time.time() - t0
    if examples:
        res["examples"]["self_questions"] = sq_examples
    return res


def test_images(n: int, size: int, seed_offset: int = 0, augment: bool = True, renderer: str = "pil"
                ) -> Tuple[List[Scene], torch.Tensor]:
    """Test scenes rendered by PIL (with the training augmentations) or as SVG rasterised by
    sharp/librsvg (then JPEG/alpha/blur the same way)."""
    import subprocess
    import tempfile
    from PIL import Image
    from training.world.render import augment as augment_image, random_long_edge, render_svg

    scenes = [scene_for("test", seed_offset + i) for i in range(n)]
    rngs = [random.Random(7_777_777 + seed_offset + i) for i in range(n)]
    if renderer == "pil":
        imgs = [render_augmented(sc, rng, strength=1.0 if augment else 0.0) for sc, rng in zip(scenes, rngs)]
    else:
        with tempfile.TemporaryDirectory(prefix="curio-eval-svg-") as tmp:
            jobs = [{"svg": render_svg(sc, random_long_edge(rng) if augment else 224), "out": f"{tmp}/{i}.png"}
                    for i, (sc, rng) in enumerate(zip(scenes, rngs))]
            with open(f"{tmp}/jobs.json", "w") as f:
                json.dump(jobs, f)
            script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "world", "render_sharp.mjs")
            subprocess.run(["node", script, f"{tmp}/jobs.json"], check=True, capture_output=True)
            imgs = [Image.open(j["out"]).convert("RGB") for j in jobs]
        if augment:
            imgs = [augment_image(im, rng) for im, rng in zip(imgs, rngs)]
    return scenes, torch.stack([preprocess_image(im, size) for im in imgs])


BAR = {"caption": 90.0, "answer": 90.0, "answer_min_form": 80.0, "sq_valid": 90.0, "sq_answer": 85.0}


def table(rows: List[Tuple[str, Dict]]) -> str:
    short = {"count": "count", "colour_of_shape": "colour", "shape_of_colour": "shape", "existence": "exist",
             "position": "position", "size": "size", "relation": "relation", "background": "backgr.",
             "count_by_attribute": "count attr"}
    head = ["model", "caption", "answer"] + [short[f] for f in FORMS] + ["SQ valid", "diversity", "SQ answer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows:
        if r is None:
            lines.append(f"| {name} | " + " | ".join(["n/a"] * (len(head) - 1)) + " |")
            continue
        cells = [name, f"{r['caption']:.1f}", f"{r['answer']:.1f}"]
        cells += [f"{r['answer_by_form'].get(f, 0):.1f}" for f in FORMS]
        cells += [f"{r['sq_valid']:.1f}", f"{r['diversity']:.1f}", f"{r['sq_answer']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def meets_bar(r: Dict) -> List[str]:
    fails = []
    if r["caption"] < BAR["caption"]:
        fails.append(f"caption {r['caption']:.1f} < 90")
    if r["answer"] < BAR["answer"]:
        fails.append(f"answer {r['answer']:.1f} < 90")
    for f, v in r["answer_by_form"].items():
        if v < BAR["answer_min_form"]:
            fails.append(f"{f} {v:.1f} < 80")
    if r["sq_valid"] < BAR["sq_valid"]:
        fails.append(f"SQ valid {r['sq_valid']:.1f} < 90")
    if r["sq_answer"] < BAR["sq_answer"]:
        fails.append(f"SQ answer {r['sq_answer']:.1f} < 85")
    return fails


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/sq-llava-micro", help="bundle folder or training checkpoint")
    ap.add_argument("--name", default=None)
    ap.add_argument("--ablation", action="append", default=None,
                    help="NAME=PATH (bundle or checkpoint); default: the two ablation runs under runs/ if present")
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0, help="questions' and self-questions' sampling (same scenes)")
    ap.add_argument("--first-scene", type=int, default=0,
                    help="index of the first test scene: another offset gives other scenes, e.g. to choose a setting on "
                         "one set and report it on another")
    ap.add_argument("--clean", action="store_true", help="no augmentation of the test renders")
    ap.add_argument("--renderer", default="pil", choices=["pil", "sharp"],
                    help="pil: the PIL renderer; sharp: SVG rasterised by sharp/librsvg")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write all numbers (and examples) here")
    ap.add_argument("--examples", type=int, default=0)
    ap.add_argument("--no-sq", action="store_true", help="captions and answers only (faster)")
    ap.add_argument("--no-ablations", action="store_true", help="evaluate --model only")
    ap.add_argument("--text", action="store_true",
                    help="give each scene as text instead of an image: the decoder alone, as the language stage trains it")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.no_ablations:
        args.ablation = []
    tok = LlamaTokenizer.from_file()
    if args.ablation is None:
        args.ablation = [f"{n}={p}" for n, p in (("w/o self-questioning", "runs/micro-no_sq/final.pt"),
                                                 ("w/o prototype extractor", "runs/micro-no_proto/final.pt"))
                         if os.path.exists(p)]
    models = [(args.name or f"SQ-LLaVA micro ({args.model})", args.model)]
    models += [tuple(a.split("=", 1)) for a in args.ablation]
    scenes = images = None
    rows = []
    for name, path in models:
        model = load_any(path)
        if not os.path.isdir(path):
            model = fp16_rounded(model)
        if images is None:
            scenes, images = test_images(args.scenes, model.cfg.vision.image_size, seed_offset=args.first_scene,
                                         augment=not args.clean, renderer=args.renderer)
            print(f"[eval] {args.scenes} test scenes from #{args.first_scene} (seeds from the test range, never trained on; "
                  f"renderer {args.renderer}{', augmented' if not args.clean else ''})", flush=True)
        print(f"[eval] {name}", flush=True)
        contexts = [scene_text(sc, random.Random(i)) for i, sc in enumerate(scenes)] if args.text else None
        r = evaluate_model(model, tok, scenes, None if args.text else images, seed=args.seed, examples=args.examples,
                           sq=not args.no_sq, log=lambda m: print(m, flush=True), contexts=contexts)
        rows.append((name, r))
    print()
    print(table(rows))
    fails = meets_bar(rows[0][1])
    print()
    print("bar (caption >= 90, answers >= 90 overall and >= 80 per form, SQ valid >= 90, SQ answers >= 85): "
          + ("met" if not fails else "NOT met: " + "; ".join(fails)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenes": args.scenes, "seed": args.seed, "results": dict(rows)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
