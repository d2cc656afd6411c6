"""Trains the micro SQ-LLaVA on the shapes world and exports models/sq-llava-micro.

    python3 -m training.train --schedule gpu --export models/sq-llava-micro   # the committed bundle
                                                    # (a CUDA GPU: ~10 min on one H200)
    /usr/bin/python3 -m training.train               # 2 CPU cores, ~2 h: the same stages, shorter
    /usr/bin/python3 -m training.train --variant no_sq       # ablation: no self-questioning
    /usr/bin/python3 -m training.train --variant no_proto    # ablation: no prototype extractor

Stages, in order (training/README.md explains what is frozen and why):
  vision    stands in for CLIP, which does not exist at this scale: the ViT and a throw-away
            per-patch probe (training/probe.py) learn each patch's object and its outline, on a
            curriculum from one big centred object to the full world.
  language  stands in for Vicuna: the LLaMA decoder alone learns the world's language from scenes
            written out as text where the image will be -- read a scene, describe it, answer
            and ask about it (the same v1 / v1_sq samples as instruct).
  align     the paper's stage 1 -- captions (v1); prototype extractor + projector trained, decoder
            and ViT frozen.
  instruct  the paper's stage 2 -- v1_sq conversations (later human turns -> VUSER with p=0.5,
            loss on VUSER questions and answers) mixed with single-turn v1 samples; everything
            trained, the probe's loss kept on so the ViT keeps what the vision stage taught it.
  focus     instruct continued (gpu schedule only) on conversations of six questions each, the
            forms a decoder gets wrong most drawn three times as often.
  lookup    instruct continued (gpu_lookup schedule only), the ViT frozen, with two grounding
            losses (training/grounding.py): half the batches are questions about one object whose
            answer position is taught to attend to it, and the image tokens are pulled towards
            their object's shape and colour words.

Resumable: progress is checkpointed to runs/<name>/ckpt.pt every few minutes; rerunning the same
command continues from it. Every batch is a pure function of (seed, stage, step).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.bundle import load_any
from training.data import (Batch, SharpPool, TextEncoder, collate, make_sample, preprocess_image,
                           scene_and_image, step_rng)
from training.grounding import (CAPTION, CELL, SHARED_COUNT, PlaceProbe, lookup_attention_loss, lookup_sample,
                                place_probe_loss, word_align_loss, word_ids)
from training.lookup import LOOKUP_FORMS
from training.probe import PatchProbe, PatchTargets, object_accuracy, patch_targets, probe_loss
from training.sqllava.configs import PRESETS, config_to_dict
from training.sqllava.model import SQLLaVA, SQLLaVAConfig, count_parameters
from training.world.language import FORMS
from training.world.render import render_augmented
from training.world.scene import BIG_SIDE, COLOURS, POSITIONS, SHAPES, sample_scene, scene_for

STAGES = ("vision", "language", "align", "instruct", "focus", "lookup")
# the two stages that fine-tune everything on images (instruct, then its dense continuation)
TUNING = ("instruct", "focus")
PLACE_PROBED = ("align", "instruct", "focus", "lookup")  # the stages that train the projector
# the question forms a trained decoder gets wrong most (lookups keyed by shape, places): focus
# draws them three times as often as the others
HARD_FORMS = ("colour_of_shape", "shape_of_colour", "position", "relation")


@dataclass
class Schedule:
    vision_steps: int = 3000
    vision_batch: int = 32
    vision_lr: float = 1e-3
    # the vision curriculum (fractions of its steps): one big centred object first (shape is learnt
    # there or nowhere), then one or two objects anywhere, then more and more of the full world
    vision_centred: float = 0.2
    vision_simple: float = 0.45
    language_steps: int = 1200
    language_batch: int = 16
    language_lr: float = 1e-3
    language_ask: float = 0.0  # share of language batches that are one question per written-out scene
    language_turns: int = 0  # language v1_sq conversations: this many questions (no description); 0: 2-4 turns
    align_steps: int = 200
    align_batch: int = 16
    align_lr: float = 1e-3
    instruct_steps: int = 800
    instruct_batch: int = 16
    instruct_lr: float = 8e-4
    # focus: instruct continued with its v1_sq conversations made of `focus_turns` questions (no
    # description), drawn from `focus_forms` (a form listed three times is drawn three times as often)
    focus_steps: int = 0
    focus_batch: int = 16
    focus_lr: float = 4e-4
    focus_turns: int = 6
    focus_forms: Tuple[str, ...] = tuple(FORMS) + HARD_FORMS * 2
    # lookup: even steps are single questions about one object, whose key-word position's heads
    # (the first KV group of `lookup_layer`) learn to attend to it, odd steps instruct's batches
    # (v1 and v1_sq in turn, so captions stay trained); every step pulls the image tokens towards
    # their object's words (`word_align`)
    lookup_steps: int = 0
    lookup_batch: int = 16
    lookup_lr: float = 4e-4
    lookup_layer: int = 1
    lookup_weight: float = 1.0
    # its questions' forms (one listed twice is drawn twice as often); "relation" may join them: its
    # answer looks up the objects it names, from the word before the first ("... there is" -> "a")
    lookup_forms: Tuple[str, ...] = LOOKUP_FORMS
    # a relation's answer looks, at each cell's "there is", at that cell (the object in it, or the
    # empty cell's patches), instead of only at the first object it names (session 11)
    relation_cells: bool = False
    # the share of the lookup stage's single-turn (v1) instruct samples that are captions instead
    # (align's: brief or detailed): the stage costs captions otherwise (training/README.md, session 8)
    lookup_captions: float = 0.0
    word_align: float = 1.0
    word_align_cell: bool = False  # the word alignment also pulls each object token towards its grid place's words
    # the share of the lookup stage's change the final weights keep: before + keep * (after - before),
    # a weight-space ensemble of the model before and after the stage (as WiSE-FT); below 1 it trades
    # part of the lookup's gain for the captions the stage costs
    lookup_keep: float = 1.0
    # what the lookup stage trains, of "vision" (the ViT, at vision_lr_scale of lookup_lr), "projector"
    # and "decoder": runs 5-8 kept the ViT frozen (training it without the vision probe cost captions:
    # training/README.md, session 13); run 9 trains it with the probe (lookup_probe, session 14)
    lookup_trains: Tuple[str, ...] = ("projector", "decoder")
    # where the lookup stage trains the ViT: the weight of the vision probe's loss (as instruct's
    # probe_weight), so the ViT is taught shapes directly, not only through the decoder; 0: off
    lookup_probe: float = 0.0
    # steps at the lookup stage's start in which the ViT stays put while the vision probe fits (a bundle
    # carries no probe, so a continuation of one starts it afresh)
    lookup_vision_hold: int = 0
    far_aspect: float = 0.0  # training.data.scene_and_image: the share of scenes redrawn wide or tall
    probe_weight: float = 0.5  # instruct, focus: the vision probe's loss kept on, so the ViT keeps its features
    # align, instruct, focus, lookup: weight of the place probe (grounding.PlaceProbe), which keeps each
    # object's grid cell readable in its projected image tokens; 0: off
    place_probe: float = 0.0
    vision_lr_scale: float = 0.3  # instruct, focus, a lookup stage that trains it: the ViT moves slower
    warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    sq_r: float = 0.5
    p_sharp: float = 0.15
    sampled_negatives: int = 3000  # sampled softmax: random vocabulary rows per step besides the world's words
    full_softmax_tail: float = 0.15  # the last part of instruct (and focus) uses the exact 32,000-way softmax

    def steps(self, stage: str) -> int:
        return getattr(self, f"{stage}_steps")

    def batch(self, stage: str) -> int:
        return getattr(self, f"{stage}_batch")

    def lr(self, stage: str) -> float:
        return getattr(self, f"{stage}_lr")


# a CUDA GPU (about 10 minutes on one H200 with 13 rendering workers): the same stages, longer, and
# focus -- run 4 (gpu_lookup, the committed bundle, adds the lookup stage)
GPU = Schedule(vision_steps=4000, language_steps=3000, language_batch=32, language_turns=6, align_steps=300,
               align_batch=32, instruct_steps=2500, instruct_batch=32, focus_steps=1800, focus_batch=32)

SCHEDULES: Dict[str, Schedule] = {
    "full": Schedule(),
    # the ablations' schedule when time is short (earlier stages shared with the main run); a
    # variant that must run its own align (no_proto) gets the gpu schedule's, as the others inherit
    "short": Schedule(align_steps=300, align_batch=32, instruct_steps=300),
    # a CUDA GPU (about 10 minutes on one H200 with 13 rendering workers): the same stages, longer,
    # and focus -- run 4
    "gpu": GPU,
    # gpu, then lookup (training/README.md, session 6: colour of a shape 58.9 -> 95.3%, captions
    # 91 -> 86.5%); `--init-from` a gpu run's focus.pt runs the lookup stage alone
    "gpu_lookup": dataclasses.replace(GPU, lookup_steps=1200, lookup_batch=32, lookup_keep=0.85),
    # the lookup stage alone on a CPU, from a finished run's focus.pt (17 min on 2 cores)
    "lookup_short": Schedule(lookup_steps=400),
    # untried: gpu_lookup with the place probe from align on and position drawn three times as
    # often in the lookup stage -- the next GPU run (training/README.md, next steps)
    "gpu_place": dataclasses.replace(GPU, lookup_steps=1200, lookup_batch=32, lookup_keep=0.85, place_probe=1.0,
                                     lookup_forms=LOOKUP_FORMS + ("position",) * 2),
    "smoke": Schedule(vision_steps=6, vision_batch=8, language_steps=4, language_batch=4, align_steps=4,
                      align_batch=4, instruct_steps=6, instruct_batch=4, focus_steps=4, focus_batch=4,
                      lookup_steps=4, lookup_batch=4, warmup=2, p_sharp=0.5),
}


# ----------------------------------------------------------------------------- model

def initial_weights(path: str, dev) -> dict:
    """What `--init-from` names: a run's <stage>.pt / final.pt or a soup (weights, probes, the next
    stage), or a bundle folder (its weights only: the committed model, continued without its run)."""
    if os.path.isdir(path):
        return {"model": load_any(path).state_dict()}
    return torch.load(path, map_location=dev)


def build_model(preset: str, variant: str) -> SQLLaVA:
    cfg = PRESETS[preset]
    if variant == "no_proto":
        cfg = dataclasses.replace(cfg, use_prototypes=False)
    model = SQLLaVA(cfg)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):  # the conv stem
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def lm_loss(model: SQLLaVA, batch: Batch, vision_grad: bool = True, candidates: Optional[torch.Tensor] = None,
            probe: Optional[PatchProbe] = None, vision_targets: Optional[PatchTargets] = None, probe_weight: float = 0.0,
            image_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Next-token loss on the batch's target tokens (after the image's tokens, or after nothing
    but the shared first chunk when the batch's scenes are text).

    `candidates` (sorted token ids, holding every target) restricts the softmax to those rows of
    lm_head -- a sampled softmax (the world's words plus random negatives) that cuts the
    32,000-way projection, the largest cost of a step; None is the exact full-vocabulary loss.
    With `probe`, the vision probe's loss on the same images is added with `probe_weight`;
    `image_loss`, given the projected image tokens, adds its own.
    """
    b, t = batch.rest_ids.shape
    dev = batch.rest_ids.device
    pre = model.embed(batch.prefix_ids[None])
    tp = pre.shape[1]
    # the first chunk (system + "USER: ") is the same for the whole batch: run it once, share its KV
    _, past = model.decode(pre, torch.ones(1, tp, dtype=torch.long, device=dev), torch.arange(tp, device=dev)[None],
                           logits_for=torch.zeros(1, tp, dtype=torch.bool, device=dev))
    past = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in past]
    aux = 0.0
    if batch.pixels is None:
        img = pre.new_zeros(b, 0, pre.shape[-1])
    else:
        with torch.set_grad_enabled(vision_grad and torch.is_grad_enabled()):
            feats = model.model.vision_tower(batch.pixels)
        img = model.model.mm_projector(feats)
        if probe is not None:
            aux = probe_weight * probe_loss(probe(feats), vision_targets)
        if image_loss is not None:
            aux = aux + image_loss(img)
    n = img.shape[1]
    emb = torch.cat([img, model.embed(batch.rest_ids)], dim=1)
    am = torch.cat([torch.ones(b, tp + n, dtype=torch.long, device=dev), batch.rest_mask], dim=1)
    pos = (tp + torch.arange(n + t, device=dev))[None].expand(b, -1)
    # the hidden state at position i predicts token i + 1: the last image token predicts the first
    # rest token; with no image, the first rest token (never a target) is predicted in the prefix
    lf = torch.zeros(b, n + t, dtype=torch.bool, device=dev)
    if n:
        lf[:, n - 1:n - 1 + t] = batch.labels
    else:
        assert not batch.labels[:, 0].any()
        lf[:, :t - 1] = batch.labels[:, 1:]
    targets = batch.rest_ids[batch.labels]
    if candidates is None:
        logits, _ = model.decode(emb, am, pos, past, logits_for=lf)
        return F.cross_entropy(logits.float(), targets) + aux
    head = model.lm_head
    try:
        model.lm_head = nn.Identity()  # decode returns the final hidden states at the loss positions
        hidden, _ = model.decode(emb, am, pos, past, logits_for=lf)
    finally:
        model.lm_head = head
    logits = hidden @ head.weight[candidates].t()
    return F.cross_entropy(logits, torch.searchsorted(candidates, targets)) + aux


def lookup_stage_loss(model: SQLLaVA, batch: Batch, patches: PatchTargets, sched: Schedule,
                      words: Tuple[List[List[int]], ...],
                      image_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                      probe: Optional[PatchProbe] = None) -> torch.Tensor:
    """The lookup stage: the exact next-token loss plus the grounding losses (training/grounding.py)
    -- the lookup attention on batches of questions about one object, the word alignment on all
    -- `image_loss` (the place probe's) on the image tokens, and with `probe` the vision probe's
    loss at `lookup_probe`."""
    attn = model.model.layers[sched.lookup_layer].self_attn
    attn.keep_attention = batch.lookup is not None

    def on_image(img: torch.Tensor) -> torch.Tensor:
        loss = image_loss(img) if image_loss is not None else img.new_zeros(())
        if sched.word_align:
            loss = loss + sched.word_align * word_align_loss(img, patches, model.model.embed_tokens, *words)
        return loss

    try:
        loss = lm_loss(model, batch, vision_grad="vision" in sched.lookup_trains, image_loss=on_image,
                       probe=probe, vision_targets=patches, probe_weight=sched.lookup_probe)
        if batch.lookup is not None:
            heads = range(model.cfg.text.num_heads // model.cfg.text.num_kv_heads)  # the first KV group
            loss = loss + sched.lookup_weight * lookup_attention_loss(attn.attention, batch.lookup, patches,
                                                                      len(batch.prefix_ids), heads)
    finally:
        attn.keep_attention, attn.attention = False, None
    return loss


def world_vocabulary(enc: TextEncoder, n_scenes: int = 400) -> torch.Tensor:
    """Token ids of the world's language (captions, every phrasing, answers, templates)."""
    ids = set()
    for i in range(n_scenes):
        scene = scene_for("train", 90_000_000 + i)
        rng = random.Random(i)
        for kind, template in (("align", "v1"), ("instruct", "v1"), ("instruct", "v1_sq"), ("instruct", "v1_sq")):
            s = make_sample(scene, rng, kind, template, 0.5, as_text=True)
            ids.update(enc.first_chunk(s.first))
            ids.update(enc.rest(s.pieces)[0])
    return torch.tensor(sorted(ids))


def candidates_for(world: torch.Tensor, targets: torch.Tensor, vocab: int, n_neg: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    neg = torch.randint(0, vocab, (n_neg,), generator=g).to(targets.device)
    return torch.unique(torch.cat([world, targets, neg]))


# ----------------------------------------------------------------------------- batches

class Data:
    """Every batch is a pure function of (seed, stage, step), so worker processes can make them."""

    def __init__(self, cfg: SQLLaVAConfig, enc: TextEncoder, seed: int, sched: Schedule, sharp: Optional[SharpPool]):
        self.cfg, self.enc, self.seed, self.sched, self.sharp = cfg, enc, seed, sched, sharp

    def vision_scene(self, rng: random.Random, progress: float):
        """The vision stage's curriculum: `progress` in [0, 1) is the share of the stage done."""
        size = self.cfg.vision.image_size
        if progress < self.sched.vision_centred:
            s = sample_scene(rng, n_objects=1, aspect=1.0, seed=-1)
            o = s.objects[0]
            o.size, o.side, o.cell = "big", rng.uniform(*BIG_SIDE), 4
            return s, preprocess_image(render_augmented(s, rng, strength=0.3), size)
        # after the simple phase, the full world's share grows from 30% to 90%
        p_full = 0.0 if progress < self.sched.vision_simple else \
            0.3 + 0.6 * (progress - self.sched.vision_simple) / (1 - self.sched.vision_simple)
        if rng.random() >= p_full:
            s = sample_scene(rng, n_objects=1 if rng.random() < 0.6 else 2, seed=-1)
            return s, preprocess_image(render_augmented(s, rng, strength=0.6), size)
        return scene_and_image(rng, size, self.sharp, self.sched.p_sharp, self.sched.far_aspect)

    def vision_batch(self, step: int, bsz: int, total: int) -> Tuple[torch.Tensor, PatchTargets]:
        scenes, pix = [], []
        for i in range(bsz):
            s, p = self.vision_scene(step_rng(self.seed, 0, step, i), step / max(1, total))
            scenes.append(s)
            pix.append(p)
        return torch.stack(pix), patch_targets(scenes, self.cfg.vision.grid_size)

    def lm_batch(self, stage: str, step: int, bsz: int, sq_r: float) -> Tuple[Batch, Optional[PatchTargets]]:
        """A batch of samples and, where instruct and focus keep the probe's loss on, its vision
        targets. The language stage's scenes are text and are not rendered."""
        template = "v1" if stage == "align" or step % 2 == 0 else "v1_sq"
        kind, how = stage, {}
        if stage == "language":  # a share of batches that are one question each (`v1`), the rest as instruct
            ask = step_rng(self.seed, "ask", step).random() < self.sched.language_ask
            kind, template = ("ask", "v1") if ask else ("instruct", template)
            how = {"as_text": True, "n_turns": self.sched.language_turns or None}
        elif stage == "focus":
            kind, how = "instruct", {"n_turns": self.sched.focus_turns, "forms": self.sched.focus_forms}
        elif stage == "lookup":  # lookup questions, then instruct's v1 and v1_sq batches in turn
            if step % 2 == 0:
                return self.lookup_batch(step, bsz)
            kind, template = "instruct", "v1" if step % 4 == 1 else "v1_sq"
        samples, pix = [], []
        for i in range(bsz):
            rng = step_rng(self.seed, STAGES.index(stage), step, i)
            if stage == "language":
                s = scene_for("train", rng.randrange(40_000_000))
            else:
                s, p = scene_and_image(rng, self.cfg.vision.image_size, self.sharp, self.sched.p_sharp,
                                       self.sched.far_aspect)
                pix.append(p)
            captions = (stage == "lookup" and template == "v1" and self.sched.lookup_captions
                        and rng.random() < self.sched.lookup_captions)
            samples.append(make_sample(s, rng, "align" if captions else kind, template, sq_r, **how))
        targets = None
        if ((stage in TUNING and self.sched.probe_weight) or stage == "lookup"
                or (stage in PLACE_PROBED and self.sched.place_probe)):
            targets = patch_targets([x.scene for x in samples], self.cfg.vision.grid_size)
        return collate(samples, pix, self.enc), targets

    def lookup_batch(self, step: int, bsz: int) -> Tuple[Batch, PatchTargets]:
        """Single questions about one object each (`v1`), with where their answers look it up."""
        samples, pix, lookup = [], [], []
        grid = self.cfg.vision.grid_size
        for i in range(bsz):
            rng = step_rng(self.seed, STAGES.index("lookup"), step, i)
            while True:
                s, p = scene_and_image(rng, self.cfg.vision.image_size, self.sharp, self.sched.p_sharp,
                                       self.sched.far_aspect)
                try:
                    sample, targets = lookup_sample(s, rng, self.enc, self.sched.lookup_forms, grid,
                                                    self.sched.relation_cells)
                    break
                except RuntimeError:  # no question about one object applies (e.g. two hexagons)
                    continue
            samples.append(sample)
            pix.append(p)
            lookup += [dataclasses.replace(t, row=i) for t in targets]
        batch = dataclasses.replace(collate(samples, pix, self.enc), lookup=lookup)
        return batch, patch_targets([x.scene for x in samples], grid)


class StageBatches(torch.utils.data.Dataset):
    """Step -> batch of one stage, for a DataLoader whose workers render while the model trains."""

    def __init__(self, data: Data, stage: str, total: int, bsz: int, sq_r: float):
        self.data, self.stage, self.total, self.bsz, self.sq_r = data, stage, total, bsz, sq_r

    def __len__(self):
        return self.total

    def __getitem__(self, step: int):
        if self.stage == "vision":
            return self.data.vision_batch(step, self.bsz, self.total)
        return self.data.lm_batch(self.stage, step, self.bsz, self.sq_r)


def batches(data: Data, stage: str, start: int, total: int, bsz: int, sq_r: float, workers: int):
    ds = StageBatches(data, stage, total, bsz, sq_r)
    if workers == 0:
        return (ds[i] for i in range(start, total))
    return iter(torch.utils.data.DataLoader(
        ds, batch_size=None, sampler=range(start, total), num_workers=workers, prefetch_factor=4,
        worker_init_fn=lambda _: torch.set_num_threads(1)))


def val_vision(cfg: SQLLaVAConfig, n: int = 200) -> Tuple[torch.Tensor, PatchTargets]:
    """Fixed validation scenes with the training augmentations, for the probe's accuracy."""
    scenes, pix = [], []
    for i in range(n):
        s = scene_for("val", 10_000 + i)
        scenes.append(s)
        pix.append(preprocess_image(render_augmented(s, random.Random(i)), cfg.vision.image_size))
    return torch.stack(pix), patch_targets(scenes, cfg.vision.grid_size)


def val_batches(cfg: SQLLaVAConfig, enc: TextEncoder, sq_r: float, n: int = 16, text: bool = False) -> List[Batch]:
    """Fixed validation samples, v1 then v1_sq: rendered scenes, or (`text`) scenes written out."""
    out = []
    for template in ("v1", "v1_sq"):
        samples, pix = [], []
        for i in range(n):
            scene = scene_for("val", i)
            rng = random.Random(i)
            if text:
                samples.append(make_sample(scene, rng, "instruct", template, sq_r, as_text=True))
                continue
            pix.append(preprocess_image(render_augmented(scene, rng, strength=0.0), cfg.vision.image_size))
            samples.append(make_sample(scene, rng, "instruct", template, sq_r))
        out.append(collate(samples, pix, enc))
    return out


# ----------------------------------------------------------------------------- training

def with_settings(sched: Schedule, settings: List[str]) -> Schedule:
    """The schedule with `FIELD=VALUE` settings (`--set`): a tuple field takes comma-separated
    values, a bool field 1/0/true/false."""
    changes = {}
    for item in settings:
        name, sep, value = item.partition("=")
        if name not in {f.name for f in dataclasses.fields(Schedule)} or not sep:
            raise SystemExit(f"--set {item}: expected FIELD=VALUE with a Schedule field")
        current = getattr(sched, name)
        if isinstance(current, tuple):
            changes[name] = tuple(v.strip() for v in value.split(",") if v.strip())
            known = FORMS + [SHARED_COUNT, CAPTION, CELL] if name == "lookup_forms" else FORMS
            unknown = [v for v in changes[name] if name.endswith("_forms") and v not in known]
            if unknown:
                raise SystemExit(f"--set {item}: {', '.join(unknown)} not a question form ({', '.join(known)})")
        elif isinstance(current, bool):
            changes[name] = value.lower() in ("1", "true", "yes")
        else:
            changes[name] = type(current)(value)
    return dataclasses.replace(sched, **changes)


def cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def trained_parameters(model: SQLLaVA, probe: PatchProbe, stage: str, place: Optional[PlaceProbe] = None,
                       lookup_trains: Sequence[str] = ("projector", "decoder")) -> Dict[str, List[nn.Parameter]]:
    """What each stage trains: {"main": [...], "vision": [...]}; everything else is frozen. The
    place probe, where there is one, trains in every stage that has it: a frozen random probe would
    only push what it reads towards noise. The lookup stage trains the parts `lookup_trains` names."""
    vit, probed = list(model.model.vision_tower.parameters()), list(probe.parameters())
    vision = vit + probed
    projector = list(model.model.mm_projector.parameters())
    placed = list(place.parameters()) if place is not None else []
    decoder = [p for n, p in model.named_parameters()
               if not n.startswith(("model.vision_tower.", "model.mm_projector."))]
    return {"vision": {"main": vision},
            "language": {"main": decoder},
            "align": {"main": projector + placed},
            "instruct": {"main": projector + placed + decoder, "vision": vision},
            "focus": {"main": projector + placed + decoder, "vision": vision},
            "lookup": lookup_parts(lookup_trains, vit, probed, projector, decoder, placed)}[stage]


def lookup_parts(names: Sequence[str], vit: List[nn.Parameter], probe: List[nn.Parameter],
                 projector: List[nn.Parameter], decoder: List[nn.Parameter],
                 placed: List[nn.Parameter]) -> Dict[str, List[nn.Parameter]]:
    """The lookup stage's groups. With the ViT, the vision probe trains at the full rate (in "main"):
    it starts afresh from a bundle and must fit before it steers the ViT (`lookup_vision_hold`)."""
    unknown = set(names) - {"vision", "projector", "decoder"}
    if unknown or not names:
        raise SystemExit(f"lookup_trains: {','.join(names)}: expected some of vision, projector, decoder")
    main = ((projector if "projector" in names else []) + placed + (decoder if "decoder" in names else [])
            + (probe if "vision" in names else []))
    return {"main": main, **({"vision": vit} if "vision" in names else {})}


def make_optimizer(model: SQLLaVA, probe: PatchProbe, stage: str, sched: Schedule, place: Optional[PlaceProbe] = None):
    lr = sched.lr(stage)
    parts = trained_parameters(model, probe, stage, place, sched.lookup_trains)
    groups = [{"params": parts["main"], "lr": lr, "part": "main"}] if parts["main"] else []
    if "vision" in parts:
        groups.append({"params": parts["vision"], "lr": lr * sched.vision_lr_scale, "part": "vision"})
    for g in groups:
        g["base_lr"] = g["lr"]
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=sched.weight_decay)


def to_device(x, dev: torch.device):
    """A batch, vision targets, or a tuple of them, with every tensor on `dev` (other fields stay)."""
    if isinstance(x, torch.Tensor):
        return x.to(dev, non_blocking=True)
    if isinstance(x, (tuple, list)):  # a DataLoader hands tuples back as lists
        return type(x)(to_device(v, dev) for v in x)
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: to_device(getattr(x, f.name), dev) for f in dataclasses.fields(x)
                                         if isinstance(getattr(x, f.name), torch.Tensor)})
    return x


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":  # TF32 matmuls: float32 training at tensor-core speed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def interpolate(before: Dict[str, torch.Tensor], after: Dict[str, torch.Tensor], keep: float) -> Dict[str, torch.Tensor]:
    """Weights `keep` of the way from `before` to `after` (0: before, 1: after)."""
    return {k: before[k] + keep * (v - before[k]) for k, v in after.items()}


def save_ckpt(path: str, state: dict):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(args, tokenizer=None) -> SQLLaVA:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sched = with_settings(SCHEDULES[args.schedule], args.set or [])
    if args.variant == "no_sq":
        sched.sq_r = 0.0
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    if tokenizer is None:
        from training.sqllava.tokenizer import LlamaTokenizer
        tokenizer = LlamaTokenizer.from_file()
    enc = TextEncoder(tokenizer)
    dev = pick_device(args.device)
    model = build_model(args.preset, args.variant).to(dev)
    cfg = model.cfg
    probe = PatchProbe(cfg.vision.hidden_size).to(dev)
    place = PlaceProbe(cfg.text.hidden_size).to(dev) if sched.place_probe else None
    print(f"[train] {args.variant}: {count_parameters(model) / 1e6:.2f}M parameters, schedule {args.schedule}, "
          f"device {dev}, out {args.out}", flush=True)
    sharp = SharpPool(os.path.join(args.cache, "sharp"), args.sharp_pool) if sched.p_sharp > 0 else None
    data = Data(cfg, enc, args.seed, sched, sharp)
    n_val = 8 if args.schedule == "smoke" else 24
    vals = [to_device(b, dev) for b in val_batches(cfg, enc, sched.sq_r, n=n_val)]
    text_vals = [to_device(b, dev) for b in val_batches(cfg, enc, sched.sq_r, n=n_val, text=True)]
    val_pix, val_targets = to_device(val_vision(cfg, 16 if args.schedule == "smoke" else 200), dev)
    world = world_vocabulary(enc, 20 if args.schedule == "smoke" else 400).to(dev)
    words = (word_ids(enc, SHAPES), word_ids(enc, COLOURS)) + ((word_ids(enc, POSITIONS),) if sched.word_align_cell else ())
    print(f"[train] world vocabulary: {len(world)} token ids", flush=True)

    stage, step, elapsed = 0, 0, 0.0
    opt_state = None
    history: List[dict] = []
    if os.path.exists(ckpt_path) and not args.fresh:
        ck = torch.load(ckpt_path, map_location=dev)
        model.load_state_dict(ck["model"])
        probe.load_state_dict(ck["probe"])
        if place is not None and "place" in ck:
            place.load_state_dict(ck["place"])
        stage, step, elapsed, opt_state, history = ck["stage"], ck["step"], ck["elapsed"], ck["opt"], ck["history"]
        print(f"[train] resumed from {ckpt_path}: stage {stage} step {step} ({elapsed / 60:.1f} min so far)", flush=True)
    elif args.init_from:
        ck = initial_weights(args.init_from, dev)
        if not args.start and "next_stage" not in ck:
            raise SystemExit(f"--init-from {args.init_from} names no next stage (a bundle folder): it needs --start")
        stage = STAGES.index(args.start) if args.start else ck["next_stage"]
        # a stage before align leaves the projector untrained, so a variant with another
        # projector (no_proto) can share it
        own = {k: v for k, v in ck["model"].items()
               if stage > STAGES.index("align") or not k.startswith("model.mm_projector.")}
        missing, unexpected = model.load_state_dict(own, strict=stage > STAGES.index("align"))
        assert not unexpected and all(k.startswith("model.mm_projector.") for k in missing), (missing, unexpected)
        if "probe" in ck:  # a probe from before the grid-cell head starts that head afresh
            missing, unexpected = probe.load_state_dict(ck["probe"], strict=False)
            assert not unexpected and all(k.startswith("cell.") for k in missing), (missing, unexpected)
        if place is not None and "place" in ck:
            place.load_state_dict(ck["place"])
        print(f"[train] stages before {STAGES[stage]} shared from {args.init_from}", flush=True)


    def place_state() -> dict:  # the place probe's weights, for checkpoints
        return {"place": place.state_dict()} if place is not None else {}

    def placed(vt: Optional[PatchTargets]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """The place probe's loss on a batch's image tokens, where it is on."""
        if place is None or vt is None:
            return None
        return lambda img: sched.place_probe * place_probe_loss(place, img, vt)

    def place_accuracy() -> str:
        model.eval()
        with torch.no_grad():
            cells = place(model.encode_images(val_pix)).argmax(-1)
        model.train()
        on = val_targets.cell >= 0
        return f"place probe on validation scenes: {(cells[on] == val_targets.cell[on]).float().mean() * 100:.1f}% of object tokens"

    def probe_accuracy() -> str:
        model.eval()
        with torch.no_grad():
            shape, colour, cell = object_accuracy(probe(model.model.vision_tower(val_pix)), val_targets)
        model.train()
        return f"probe on validation scenes: shape {shape * 100:.1f}% colour {colour * 100:.1f}% cell {cell * 100:.1f}%"

    # the lookup stage teaches the ViT through the vision probe only where it trains the ViT
    probed_lookup = bool(sched.lookup_probe) and "vision" in sched.lookup_trains
    last_ckpt = time.time()
    while stage < len(STAGES):
        name = STAGES[stage]
        total = sched.steps(name)
        if total == 0:
            stage += 1
            continue
        opt = make_optimizer(model, probe, name, sched, place)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
            opt_state = None
        trained = {id(p) for g in opt.param_groups for p in g["params"]}  # what the stage trains, as grouped
        for p in list(model.parameters()) + list(probe.parameters()) + (list(place.parameters()) if place else []):
            p.requires_grad_(id(p) in trained)
        model.train()
        ema = None
        t0 = t_log = time.time()  # t0: training time not yet added to `elapsed`; t_log: the last progress line
        t_data = 0.0
        feed = batches(data, name, step, total, sched.batch(name), sched.sq_r, args.workers)
        while step < total:
            lr_f = cosine(step, total, sched.warmup)
            held = name == "lookup" and step < sched.lookup_vision_hold
            for g in opt.param_groups:
                g["lr"] = 0.0 if held and g.get("part") == "vision" else g["base_lr"] * lr_f
            ts = time.time()
            item = to_device(next(feed), dev)
            t_data += time.time() - ts
            if name == "vision":
                pix, vt = item
                loss = probe_loss(probe(model.model.vision_tower(pix)), vt)
            elif name == "lookup":
                batch, vt = item
                loss = lookup_stage_loss(model, batch, vt, sched, words, placed(vt), probe if probed_lookup else None)
            else:
                batch, vt = item
                cand = None
                if sched.sampled_negatives and not (name in TUNING and step >= total * (1 - sched.full_softmax_tail)):
                    cand = candidates_for(world, batch.rest_ids[batch.labels], cfg.text.vocab_size,
                                          sched.sampled_negatives, args.seed * 1_000_003 + stage * 100_003 + step)
                loss = lm_loss(model, batch, vision_grad=name in TUNING, candidates=cand,
                               probe=probe if vt is not None and name in TUNING else None, vision_targets=vt,
                               probe_weight=sched.probe_weight, image_loss=placed(vt) if name in PLACE_PROBED else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, sched.clip)
            opt.step()
            step += 1
            lv = loss.item()
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            now = time.time()
            if step % args.log_every == 0 or step == total:
                dt = (now - t_log) / max(1, step - (history[-1]["step"] if history and history[-1]["stage"] == stage else 0))
                print(f"[{name}] step {step}/{total} loss {lv:.4f} (ema {ema:.4f}) lr {opt.param_groups[0]['lr']:.2e} "
                      f"{dt:.2f}s/step (waiting for data {t_data / max(1e-9, now - t_log) * 100:.0f}%) "
                      f"elapsed {(elapsed + now - t0) / 60:.1f} min", flush=True)
                history.append({"stage": stage, "step": step, "loss": ema})
                elapsed += now - t0
                t0, t_log, t_data = now, now, 0.0
            if step % args.val_every == 0 or step == total:
                if name != "vision":
                    model.eval()
                    with torch.no_grad():
                        vl = [lm_loss(model, vb).item() for vb in (text_vals if name == "language" else vals)]
                    model.train()
                    print(f"[{name}] val loss v1 {vl[0]:.4f} v1_sq {vl[1]:.4f}", flush=True)
                if name in ("vision",) + TUNING or (name == "lookup" and probed_lookup):
                    print(f"[{name}] {probe_accuracy()}", flush=True)
                if place is not None and name in PLACE_PROBED:
                    print(f"[{name}] {place_accuracy()}", flush=True)
            if time.time() - last_ckpt > args.ckpt_seconds or step == total:
                elapsed += time.time() - t0
                t0 = time.time()
                save_ckpt(ckpt_path, {"model": model.state_dict(), "probe": probe.state_dict(), **place_state(), "stage": stage,
                                      "step": step, "elapsed": elapsed, "opt": opt.state_dict(),
                                      "history": history, "config": config_to_dict(cfg), "variant": args.variant})
                last_ckpt = time.time()
        save_ckpt(os.path.join(args.out, f"{name}.pt"),
                  {"model": model.state_dict(), "probe": probe.state_dict(), **place_state(), "next_stage": stage + 1,
                   "config": config_to_dict(cfg)})
        stage, step = stage + 1, 0
        save_ckpt(ckpt_path, {"model": model.state_dict(), "probe": probe.state_dict(), **place_state(), "stage": stage, "step": 0,
                              "elapsed": elapsed, "opt": None, "history": history, "config": config_to_dict(cfg),
                              "variant": args.variant})
    if sched.lookup_steps and sched.lookup_keep != 1.0:
        # the weights the lookup stage started from: the last earlier stage this run saved, else --init-from
        saved = [p for p in (os.path.join(args.out, f"{st}.pt") for st in STAGES[:STAGES.index("lookup")])
                 if os.path.exists(p)]
        before = saved[-1] if saved else args.init_from
        model.load_state_dict(interpolate(initial_weights(before, dev)["model"], model.state_dict(),
                                          sched.lookup_keep))
        print(f"[train] final weights: {sched.lookup_keep:g} of the lookup stage's change from {before}", flush=True)
    if enc.inexact:
        print(f"[train] note: {enc.inexact} loss-mask prefixes did not tokenise as exact prefixes", flush=True)
    model.eval()
    final = os.path.join(args.out, "final.pt")
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg), "variant": args.variant,
                "elapsed": elapsed, "history": history, "schedule": sched.__dict__}, final)
    print(f"[train] done in {elapsed / 60:.1f} min of training; weights at {final}", flush=True)
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--variant", default="full", choices=["full", "no_sq", "no_proto"])
    ap.add_argument("--schedule", default="auto", choices=["auto"] + sorted(SCHEDULES),
                    help="auto: gpu where --device resolves to a CUDA GPU, else full (2 CPU cores, ~2 h)")
    ap.add_argument("--out", default=None, help="run folder (default runs/micro-<variant>)")
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--sharp-pool", type=int, default=3000)
    ap.add_argument("--init-from", default=None,
                    help="start after the stage saved in another run's <stage>.pt (vision.pt, language.pt, align.pt), "
                         "or from a bundle folder's weights (with --start), e.g. models/sq-llava-micro")
    ap.add_argument("--start", default=None, choices=STAGES,
                    help="with --init-from: the first stage to run (default: the one after the stage it saved), e.g. "
                         "lookup again from a finished run's lookup.pt")
    ap.add_argument("--set", action="append", metavar="FIELD=VALUE",
                    help="change one field of the schedule, e.g. --set lookup_steps=400 --set lookup_forms=position,size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU if there is one, else cpu), cpu, cuda, cuda:1, ...")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes rendering batches ahead of training (0: inline; default 1, on a GPU all cores but 3)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--ckpt-seconds", type=float, default=240)
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--export", default=None, help="bundle folder to write at the end (e.g. models/sq-llava-micro)")
    args = ap.parse_args(argv)
    args.device = str(pick_device(args.device))  # "auto" resolved once, for the schedule and train()
    on_gpu = args.device.startswith("cuda")
    if args.schedule == "auto":
        args.schedule = "gpu_lookup" if on_gpu else "full"
    if args.workers is None:  # a GPU step takes milliseconds: rendering needs every spare core
        args.workers = max(1, (os.cpu_count() or 4) - 3) if on_gpu else 1
    args.out = args.out or f"runs/micro-{args.variant}"
    final = os.path.join(args.out, "final.pt")
    if os.path.exists(final) and not args.fresh:
        print(f"[train] {final} exists; skipping training", flush=True)
    else:
        train(args)
    if args.export:
        from training.bundle import export_micro
        export_micro(final, args.export,
                     command=" ".join(["python3 -m training.train"] + list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
