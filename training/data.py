"""Training samples for the micro SQ-LLaVA: shapes-world scenes -> pixels + token ids + loss mask.

A sample is a template (`v1` or `v1_sq`), a scene and a list of text pieces, each marked as a
loss target or not. The prompt is split on `<image>` as the reference does: the first chunk
(system message and `USER: `) keeps BOS and is the same for every sample of a template, so it
is tokenised once; the rest is tokenised with BOS dropped, and the loss mask is found by
tokenising growing prefixes of it (the LLaVA `preprocess_v1` way, but checked to be exact).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from training.sqllava.conversation import SYSTEM_V1, SYSTEM_V1_SQ, sq_training_text
from training.world.language import (BRIEF_PROMPT, DETAILED_PROMPT, FORMS, brief_caption, conversation,
                                     detailed_caption, sample_question)
from training.world.render import augment, random_long_edge, render_augmented, render_svg
from training.world.scene import Scene, scene_for

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

Piece = Tuple[str, bool]  # (text, is_loss_target)


def preprocess_image(img: Image.Image, size: int) -> torch.Tensor:
    """expand2square with the mean colour, bicubic resize, normalise -> [3,S,S] float."""
    try:
        from training.sqllava.image import preprocess  # the shared implementation, when present
        return torch.as_tensor(np.asarray(preprocess(img, size, MEAN, STD, "bicubic")), dtype=torch.float32)
    except ImportError:
        pass
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in MEAN))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    img = img.resize((size, size), Image.BICUBIC)
    a = np.asarray(img, np.float32) / 255.0
    a = (a - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


# ----------------------------------------------------------------------------- text layouts

def v1_pieces(question: str, answer: str) -> Tuple[str, List[Piece]]:
    """`{SYS} USER: <image>\\n{Q} ASSISTANT: {A}</s>` -> (first chunk, rest pieces)."""
    return SYSTEM_V1 + " USER: ", [("\n" + question + " ASSISTANT:", False), (" " + answer + "</s>", True)]


def v1_sq_pieces(turns: Sequence[Tuple[str, str, str]], loss_on_questions: bool = True) -> Tuple[str, List[Piece]]:
    """The trained v1_sq layout (`sq_training_text`), loss on VUSER questions and all answers."""
    pieces: List[Piece] = []
    for i, (role, q, a) in enumerate(turns):
        if i == 0:
            pieces.append(("\n" + q + " ASSISTANT:", False))
        elif role == "VUSER":
            pieces.append(("VUSER:", False))
            pieces.append((" " + q + "</s>", loss_on_questions))
            pieces.append((" ASSISTANT:", False))
        else:
            pieces.append(("USER: " + q + " ASSISTANT:", False))
        pieces.append((" " + a + "</s>", True))
    return SYSTEM_V1_SQ + " USER: ", pieces


def full_text(first: str, pieces: Sequence[Piece]) -> str:
    return first + "<image>" + "".join(t for t, _ in pieces)


class TextEncoder:
    """Tokenises chunks the reference way (each chunk with BOS, BOS dropped after the first)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self._first: Dict[str, List[int]] = {}
        self.inexact = 0

    def first_chunk(self, text: str) -> List[int]:
        if text not in self._first:
            self._first[text] = list(self.tok.encode(text, add_bos=True))
        return self._first[text]

    def rest(self, pieces: Sequence[Piece]) -> Tuple[List[int], List[bool]]:
        text = "".join(t for t, _ in pieces)
        ids = list(self.tok.encode(text, add_bos=True))[1:]
        labels = [False] * len(ids)
        prefix = ""
        start = 0
        for t, target in pieces:
            prefix += t
            if prefix == text:
                end = len(ids)
            else:
                pre = list(self.tok.encode(prefix, add_bos=True))[1:]
                end = min(len(pre), len(ids))
                if pre != ids[:len(pre)]:
                    self.inexact += 1
            if target:
                for j in range(start, end):
                    labels[j] = True
            start = end
        return ids, labels


# ----------------------------------------------------------------------------- sample mixtures

@dataclass
class Sample:
    template: str  # v1 | v1_sq
    first: str
    pieces: List[Piece]
    scene: Scene


def sq_turns(scene: Scene, rng: random.Random, sq_r: float, n_turns: Optional[int] = None,
             forms: Sequence[str] = FORMS) -> List[Tuple[str, str, str]]:
    """Conversation turns; every human turn after the first becomes VUSER with probability sq_r
    (`preprocess_v1_sq2`). A fixed `n_turns` asks that many questions, of `forms`, and no description."""
    talk = conversation(scene, rng) if n_turns is None else \
        conversation(scene, rng, n_turns, p_describe=0.0, forms=forms)
    turns = []
    for i, (q, a) in enumerate(talk):
        role = "VUSER" if i > 0 and rng.random() < sq_r else "USER"
        turns.append((role, q, a))
    return turns


def make_sample(scene: Scene, rng: random.Random, kind: str, template: str, sq_r: float = 0.5,
                as_text: bool = False, n_turns: Optional[int] = None, forms: Sequence[str] = FORMS) -> Sample:
    """A training sample. `kind` "align" is captions only; "ask" one question (`v1`); "instruct"
    mixes captions, questions and (with `v1_sq`) conversations. With `as_text`, the scene is
    written out (`scene_text`) where the image would be -- the language stage, where the decoder
    learns to read a scene and answer about it. `n_turns` fixes a v1_sq conversation's length
    (questions only, of `forms`)."""
    context = scene_text(scene, rng) if as_text else None
    if kind == "align" or template == "v1":
        r = rng.random()
        if kind == "ask":  # one question, no caption
            qq = sample_question(scene, rng)
            q, a = qq.text, qq.answer
        elif kind == "align":
            q, a = (BRIEF_PROMPT, brief_caption(scene, rng)) if r < 0.6 else (DETAILED_PROMPT, detailed_caption(scene, rng))
        elif r < 0.3:
            q, a = BRIEF_PROMPT, brief_caption(scene, rng)
        elif r < 0.4:
            q, a = DETAILED_PROMPT, detailed_caption(scene, rng)
        else:
            qq = sample_question(scene, rng)
            q, a = qq.text, qq.answer
        first, pieces = v1_pieces(q, a)
        sample = Sample("v1", first, pieces, scene)
    else:
        turns = sq_turns(scene, rng, sq_r, n_turns, forms)
        first, pieces = v1_sq_pieces(turns, loss_on_questions=sq_r > 0)
        assert full_text(first, pieces) == sq_training_text(turns)
        sample = Sample("v1_sq", first, pieces, scene)
    if context is not None:
        text, target = sample.pieces[0]
        sample.pieces[0] = (context + text, target)
    return sample


def scene_text(scene: Scene, rng: random.Random) -> str:
    """The scene written out (the detailed description) for the language stage."""
    return detailed_caption(scene, rng)


# ----------------------------------------------------------------------------- images

class SharpPool:
    """Scenes rasterised from SVG by sharp/librsvg (the second renderer), made once and cached."""

    def __init__(self, cache_dir: str, n: int, base_index: int = 50_000_000):
        self.items: List[Tuple[Scene, str]] = []
        os.makedirs(cache_dir, exist_ok=True)
        jobs = []
        rng = random.Random(base_index)
        for i in range(n):
            scene = scene_for("train", base_index + i)
            out = os.path.join(cache_dir, f"{i:05d}.png")
            if not os.path.exists(out):
                jobs.append({"svg": render_svg(scene, random_long_edge(rng)), "out": out})
            else:
                random_long_edge(rng)
            self.items.append((scene, out))
        if jobs:
            path = os.path.join(cache_dir, "jobs.json")
            with open(path, "w") as f:
                json.dump(jobs, f)
            script = os.path.join(os.path.dirname(__file__), "world", "render_sharp.mjs")
            try:
                subprocess.run(["node", script, path], check=True, timeout=600,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            except Exception as e:  # no node/sharp: PIL only
                print(f"[data] sharp renderer unavailable ({e}); using PIL only", flush=True)
                self.items = []

    def __len__(self):
        return len(self.items)

    def get(self, rng: random.Random) -> Tuple[Scene, Image.Image]:
        scene, path = self.items[rng.randrange(len(self.items))]
        img = Image.open(path).convert("RGB")
        return scene, augment(img, rng)


def step_rng(seed: int, *keys) -> random.Random:
    h = hashlib.sha256(json.dumps([seed, *keys]).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def scene_and_image(rng: random.Random, size: int, sharp: Optional[SharpPool], p_sharp: float = 0.15,
                    far_aspect: float = 0.0) -> Tuple[Scene, torch.Tensor]:
    """A training scene and its preprocessed image. `far_aspect`: the share of the PIL-rendered scenes
    redrawn at 1.3-1.7:1, wide or tall, where padding to square leaves a small object 10-14 px on a
    128 px input (training/README.md, session 13); 0 keeps the world's own mix (60% square)."""
    if sharp is not None and len(sharp) and rng.random() < p_sharp:
        scene, img = sharp.get(rng)
    else:
        scene = scene_for("train", rng.randrange(40_000_000))
        if far_aspect and rng.random() < far_aspect:
            scene = replace(scene, aspect=rng.uniform(1.3, 1.7) if rng.random() < 0.5 else rng.uniform(0.6, 0.77))
        img = render_augmented(scene, rng)
    return scene, preprocess_image(img, size)


# ----------------------------------------------------------------------------- batches

@dataclass
class Batch:
    pixels: Optional[torch.Tensor]  # [B,3,S,S]; None when the scenes are given as text
    prefix_ids: torch.Tensor  # [Tp]  (same first chunk for the whole batch)
    rest_ids: torch.Tensor  # [B,T] right-padded
    rest_mask: torch.Tensor  # [B,T] 1 real / 0 pad
    labels: torch.Tensor  # [B,T] bool: token is a loss target
    template: str
    scenes: List[Scene]
    lookup: Optional[list] = None  # training.grounding.LookupTarget of the lookup stage's questions, each naming its row


def collate(samples: List[Sample], pixels: List[torch.Tensor], enc: TextEncoder) -> Batch:
    firsts = {s.first for s in samples}
    assert len(firsts) == 1, "a batch holds one template"
    prefix = enc.first_chunk(samples[0].first)
    rows = [enc.rest(s.pieces) for s in samples]
    t = max(len(ids) for ids, _ in rows)
    b = len(rows)
    ids = torch.zeros(b, t, dtype=torch.long)
    mask = torch.zeros(b, t, dtype=torch.long)
    labels = torch.zeros(b, t, dtype=torch.bool)
    for i, (r, lab) in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
        labels[i, :len(r)] = torch.tensor(lab)
    return Batch(torch.stack(pixels) if pixels else None, torch.tensor(prefix), ids, mask, labels, samples[0].template,
                 [s.scene for s in samples])
