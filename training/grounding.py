"""Two training signals that teach the decoder to look an object up by what it is (the `lookup` stage).

Run 4's decoder answers "What color is the hexagon?" by chance although the image tokens carry
each patch's shape and the answer position knows the asked shape (training/lookup.py measures
both): its heads spread over all objects. Billion-scale pretraining gives a real LLaVA this
grounding; at micro scale it is taught directly:

- **lookup attention**: for a single question about one object, the heads of one KV group in
  one layer, at the position that predicts the answer's key word ("The hexagon is" -> colour),
  are asked to put their attention on that object's image tokens (-log of the share they do);
  a relation question's answer, at the word before the first object it names, on the objects
  it names ("nothing": no target), or (`relation_cells`) at each cell's "there is" on that
  cell: its object, or its patches where it is empty; an existence answer's first word on the
  object asked for ("no": no target); a count by attribute's number on every object it counts;
  a brief caption (`caption`) at each object's article on that object; a training-only
  question about one cell (`cell`, "What is at the top left?") at its "there is" on the cell;
- **word alignment**: each projected image token of an object is pulled towards the word
  embeddings of its object's shape and colour (a cosine softmax over the world's shapes and
  colours), so that a word in the question and the object in the image share a direction.

Neither changes the model or its export; both are losses beside the next-token loss.

A third signal, the **place probe**, keeps each object's place in its image tokens: the prototype
projector mixes every token with its cluster's aggregate, and run 5's projected tokens hold their
patch's grid cell at 56-64% (a linear probe) where the ViT features under them hold it at 84-86%
(training/README.md, session 7). A linear head must read each object token's grid cell; it is
thrown away after training, like the vision probe.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.data import Sample, TextEncoder, v1_pieces
from training.lookup import LOOKUP_FORMS, cell_prefixes, key_position, looked_up, object_patches, prefix_position
from training.probe import NONE, PatchTargets, cell_patches
from training.world.language import (BRIEF_PROMPT, Question, brief_caption, cell_question, sample_question,
                                     shared_count_question)
from training.world.scene import COLOURS, POSITIONS, SHAPES, Scene

WORD_SCALE = 20.0  # cosine -> logit scale of the word alignment


@dataclass
class LookupTarget:
    at: int  # index in the sample's rest tokens of the position that predicts the key word
    objects: Tuple[Tuple[int, int], ...]  # (shape, colour) of each object to look at
    region: Tuple[int, ...] = ()  # patch tokens to look at besides (an empty grid cell); none of both: no loss
    row: int = 0  # the sample's row in its batch


SHARED_COUNT = "shared_count"
CAPTION = "caption"  # a brief caption, each object it names looked up where its mention starts
CELL = "cell"  # "What is at the top left?" (`language.cell_question`), looked up at "there is"


def lookup_sample(scene: Scene, rng: random.Random, enc: TextEncoder, forms: Sequence[str] = LOOKUP_FORMS,
                  cell_grid: int = 0, relation_cells: bool = False) -> Tuple[Sample, List[LookupTarget]]:
    """A single question (`v1`) of `forms` (LOOKUP_FORMS, "relation", "existence" and
    "count_by_attribute": what each looks up is `looked_up`'s; a form listed twice is drawn twice as
    often; SHARED_COUNT, a count by attribute whose answer is two or more; CAPTION, a brief caption
    instead, `caption_targets`; CELL, a question about one grid cell) and where its answer looks:
    one target, or with `relation_cells` one per cell of a relation answer (`relation_cell_targets`).
    `cell_grid`, the image's patch grid side, lets an empty cell be looked at (0: not). Raises
    RuntimeError when none applies."""
    form = rng.choice(forms) if {SHARED_COUNT, CAPTION, CELL} & set(forms) else None
    if form == CAPTION:
        caption = brief_caption(scene, rng)
        first, pieces = v1_pieces(BRIEF_PROMPT, caption)
        return Sample("v1", first, pieces, scene), caption_targets(scene, caption, enc)
    questions = [f for f in forms if f not in (CAPTION, CELL)]
    q = (shared_count_question(scene, rng) if form == SHARED_COUNT else cell_question(scene, rng) if form == CELL
         else sample_question(scene, rng, form, questions))
    first, pieces = v1_pieces(q.text, q.answer)
    sample = Sample("v1", first, pieces, scene)
    if (relation_cells and q.form == "relation") or q.form == CELL:
        return sample, relation_cell_targets(scene, q, enc, cell_grid)
    objects = tuple((SHAPES.index(o.shape), COLOURS.index(o.colour)) for o in looked_up(scene, q))
    return sample, [LookupTarget(key_position(enc, q), objects)]


def relation_cell_targets(scene: Scene, q: Question, enc: TextEncoder, grid: int) -> List[LookupTarget]:
    """A relation answered cell by cell (or a CELL question) looks, at each "there is", at that
    cell: at the object in it, or (with `grid`) at the empty cell's patches (the answer says
    "nothing"). Every step is taught, not only the first object named (session 11)."""
    at = scene.by_cell()
    if q.form == CELL:  # "At the top left, there is" -> "a small blue square." / "nothing."
        cells = [(POSITIONS.index(q.slots["cell"]), q.answer[:q.answer.index("there is") + len("there is")])]
    else:
        cells = cell_prefixes(scene, q)
    return [LookupTarget(prefix_position(enc, q.text, prefix),
                         ((SHAPES.index(at[c].shape), COLOURS.index(at[c].colour)),) if c in at else (),
                         () if c in at or not grid else cell_patches(scene, grid, c))
            for c, prefix in cells]


def caption_targets(scene: Scene, caption: str, enc: TextEncoder) -> List[LookupTarget]:
    """A brief caption looks, at each object's article ("a" -> "small red star"), at that object:
    captions that name one object twice and miss another (half of run 7's wrong captions) skip
    an object the heads never moved to (session 11)."""
    out = []
    for m in re.finditer(r"\b([Aa]) (?:small|big) (\w+) (\w+)\b", caption):
        o = scene.find(colour=m.group(2), shape=m.group(3))[0]
        out.append(LookupTarget(prefix_position(enc, BRIEF_PROMPT, caption[:m.end(1)]),
                                ((SHAPES.index(o.shape), COLOURS.index(o.colour)),)))
    assert len(out) == len(scene.objects), caption
    return out


def lookup_attention_loss(attention: torch.Tensor, targets: Sequence[LookupTarget], patches: PatchTargets,
                          prefix_len: int, heads: Sequence[int]) -> torch.Tensor:
    """-log of the attention share on each target's objects' image tokens (and region), averaged
    over the targets that have any (a relation answered "nothing" as a whole, a "no" or a count of
    none have none).

    `attention` [B,H,T,P] is one layer's, kept by `lm_loss`'s decode over [image tokens, rest]
    after the shared prefix: the query of rest token r of row b is attention[b, :, n + r], image
    token j is key prefix_len + j.
    """
    if not targets:
        return attention.new_zeros(())
    n = patches.shape.shape[1]
    rows = torch.tensor([t.row for t in targets], device=attention.device)
    at = torch.tensor([n + t.at for t in targets], device=attention.device)
    img = attention[rows, :, at][:, list(heads), prefix_len:prefix_len + n]  # [targets,h,N]
    own = torch.zeros(len(targets), n, dtype=torch.bool, device=patches.shape.device)
    for i, t in enumerate(targets):
        for shape, colour in t.objects:
            own[i] |= object_patches(patches, shape, colour, t.row)
        own[i, list(t.region)] = True
    has = own.any(-1).to(attention.device)
    if not has.any():
        return attention.new_zeros(())
    share = (img * own.to(attention.device)[:, None]).sum(-1)  # [targets,h]
    return -share[has].clamp_min(1e-6).log().mean()


def word_ids(enc: TextEncoder, words: Sequence[str]) -> List[List[int]]:
    """Token ids of each word as it appears inside a sentence (after a space)."""
    return [enc.rest([(" " + w, False)])[0] for w in words]


def word_align_loss(image_tokens: torch.Tensor, patches: PatchTargets, embed: torch.nn.Embedding,
                    shapes: List[List[int]], colours: List[List[int]],
                    cells: Optional[List[List[int]]] = None) -> torch.Tensor:
    """Cross-entropy of each object token's cosine to the world's shape words and colour words,
    and with `cells` (the grid positions' words, "top left" ...) to its place's words too."""
    dev = image_tokens.device

    def words(ids: List[List[int]]) -> torch.Tensor:  # mean embedding of each word's tokens, fixed
        return torch.stack([embed.weight[torch.tensor(w, device=dev)].mean(0) for w in ids]).detach()

    z = F.normalize(image_tokens, dim=-1)
    by_shape = WORD_SCALE * z @ F.normalize(words(shapes), dim=-1).t()
    by_colour = WORD_SCALE * z @ F.normalize(words(colours), dim=-1).t()
    shape = patches.shape.masked_fill(patches.shape == NONE, -100).to(dev)
    loss = (F.cross_entropy(by_shape.flatten(0, 1), shape.flatten())
            + F.cross_entropy(by_colour.flatten(0, 1), patches.colour.to(dev).flatten()))
    if cells is not None:
        by_cell = WORD_SCALE * z @ F.normalize(words(cells), dim=-1).t()
        loss = loss + F.cross_entropy(by_cell.flatten(0, 1), patches.cell.to(dev).flatten())
    return loss


class PlaceProbe(nn.Module):
    """A linear read of the grid cell of the object each projected image token belongs to."""

    def __init__(self, d: int):
        super().__init__()
        self.cell = nn.Linear(d, len(POSITIONS))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.cell(image_tokens)


def place_probe_loss(probe: PlaceProbe, image_tokens: torch.Tensor, patches: PatchTargets) -> torch.Tensor:
    """Cross-entropy of the place probe on the object tokens (`patches.cell`, -100 elsewhere)."""
    logits = probe(image_tokens)
    return F.cross_entropy(logits.flatten(0, 1), patches.cell.to(logits.device).flatten(), ignore_index=-100)
