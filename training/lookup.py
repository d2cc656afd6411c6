"""Where the decoder looks when it answers about one object: a diagnostic of the lookup.

    /usr/bin/python3 -m training.lookup --model models/sq-llava-micro --scenes 150

For questions about one object ("What color is the hexagon?"), or (--forms relation existence
count_by_attribute) whose answer looks objects up ("Is there a blue triangle?" -> "Yes"), on
held-out scenes of two or more objects, with the reference answer given (teacher forcing):

  answer right   every token of the reference answer is the model's argmax
  own / other    each head's attention, at the position that predicts the answer's key word
                 ("The hexagon is" -> colour), on the image tokens of the looked-up objects and
                 on those of the other objects; a head that looks the object up has own >> other,
                 a head that looks at objects in general has own/other near their areas' ratio
  asked (layer)  how well a linear probe reads the asked-about attribute at that position, at
                 each layer's input (--probe): whether the query still knows what was asked
  answer (layer) ... and the answer's key (the colour, shape, place or size; --probe): whether
                 what the heads bring back from the object reaches the answer

With --relation-cells: relations asked uniformly (`relation_cell_cases`), each cell of the
reference answer read where it says "there is": the next word right ("nothing" / "a"), an
occupied cell's object named right, and the lookup heads' attention on the cell.

Run 4's bundle (training/README.md) answers colour-of-a-shape questions only by chance: its
heads spread over all objects, while shape-of-a-colour heads pick the object.
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from training.bundle import load_any
from training.data import Batch, Sample, TextEncoder, collate, preprocess_image, v1_pieces
from training.probe import PatchTargets, cell_patches, patch_targets
from training.sqllava.model import SQLLaVA
from training.sqllava.tokenizer import LlamaTokenizer
from training.world.language import (ANSWER_KEYS, PHRASINGS, RELATIONS, Question, answer_for, cells_towards, counted,
                                     sample_question)
from training.world.render import render_augmented
from training.world.scene import COLOURS, SHAPES, SIZES, Scene, SceneObject, scene_for

LOOKUP_FORMS = ("colour_of_shape", "shape_of_colour", "position", "size")
# forms whose answer looks up objects the question does not single out (`looked_up`)
MULTI_FORMS = ("relation", "existence", "count_by_attribute")


def referent(scene: Scene, q: Question) -> SceneObject:
    """The one object a question of LOOKUP_FORMS is about."""
    if q.form == "colour_of_shape":
        return scene.find(shape=q.slots["shape"])[0]
    if q.form == "shape_of_colour":
        return scene.find(colour=q.slots["colour"])[0]
    return named(scene, q)[0]


def named(scene: Scene, q: Question) -> List[SceneObject]:
    """The objects of the colour and shape a question names ("Is there a blue triangle?")."""
    colour, shape = q.slots["obj"].split(" ")
    return scene.find(colour=colour, shape=shape)


def looked_up(scene: Scene, q: Question) -> List[SceneObject]:
    """The objects an answer must look up: the one a question of LOOKUP_FORMS is about, those a
    relation's answer names, nearest first (none where it answers "nothing"), the one an existence
    question asks for (none: "no") or those a count by attribute counts."""
    if q.form == "relation":
        return [] if q.key == "nothing" else [o for ref in q.key.split("|") for o in scene.objects if o.ref == ref]
    if q.form == "existence":
        return named(scene, q)
    if q.form == "count_by_attribute":
        return counted(scene, q.slots)
    return [referent(scene, q)]


def key_prefix(q: Question) -> str:
    """The answer up to its key word: "The hexagon is", "The pink object is a", "... is at the";
    for a relation, up to the first object it names ("... at the top left, there is") or
    "nothing"; for existence, nothing ("Yes" / "No" comes first); for a count by attribute,
    "There are" ("two" / "no")."""
    if q.form == "relation":
        first = q.key.split("|")[0]
        key = r"\bnothing\b" if first == "nothing" else rf"\b[Aa]n? (?:{'|'.join(SIZES)}) {first}\b"
        return q.answer[:re.search(key, q.answer).start()].rstrip()
    if q.form == "existence":
        return ""
    if q.form == "count_by_attribute":
        return q.answer[:re.search(rf"\b{q.key}\b", q.answer).start()].rstrip()
    start = q.answer.index(" is ")
    return q.answer[:q.answer.index(q.key, start)].rstrip()


def key_position(enc: TextEncoder, q: Question) -> int:
    """Index, in a `v1` sample's rest tokens, of the position that predicts the answer's key word."""
    return prefix_position(enc, q.text, key_prefix(q))


def prefix_position(enc: TextEncoder, question: str, prefix: str) -> int:
    """Index, in a `v1` sample's rest tokens, of the last token of the answer's `prefix` (the
    position that predicts the word after it)."""
    return len(enc.rest([("\n" + question + " ASSISTANT:" + (" " + prefix if prefix else ""), False)])[0]) - 1


def cell_prefixes(scene: Scene, q: Question) -> List[Tuple[int, str]]:
    """Each grid cell a relation answer goes through, nearest first, with the answer up to what it
    holds: (1, "... at the top, there is"), (0, "...; at the top left, there is"); none where the
    asked object has no cell that way ("..., there is nothing.")."""
    cells = cells_towards(named(scene, q)[0].cell, q.slots["rel"])
    ends = [m.end() for m in re.finditer(r"\bthere is\b", q.answer)] if cells else []
    assert len(ends) == len(cells), q.answer
    return [(c, q.answer[:e]) for c, e in zip(cells, ends)]


def object_patches(patches: PatchTargets, shape, colour, row: Optional[int] = None) -> torch.Tensor:
    """Which patch tokens belong to the object of `shape` and `colour` (indices, or [B,1] tensors):
    [B,P], or [P] for one `row` of the batch."""
    if row is None:
        return (patches.shape == shape) & (patches.colour == colour)
    return (patches.shape[row] == shape) & (patches.colour[row] == colour)


@dataclass
class LookupCase:
    scene: Scene
    question: Question
    targets: List[SceneObject]  # what the answer's key word looks up (`looked_up`)
    pixels: torch.Tensor


def lookup_cases(form: str, n: int, size: int, start: int = 10_000) -> List[LookupCase]:
    """`n` test scenes with two or more objects and a question of `form` whose answer looks
    something up (a relation answered "nothing", a "no" or a count of none are passed over)."""
    cases, i = [], start
    while len(cases) < n:
        scene = scene_for("test", i)
        rng = random.Random(i)
        i += 1
        if len(scene.objects) < 2:
            continue
        try:
            q = sample_question(scene, rng, form=form)
        except (RuntimeError, ValueError):
            continue
        targets = looked_up(scene, q)
        if not targets:
            continue
        img = render_augmented(scene, rng, strength=0.0)
        cases.append(LookupCase(scene, q, targets, preprocess_image(img, size)))
    return cases


@dataclass
class LookupReport:
    form: str
    n: int
    answer_right: float
    own: torch.Tensor  # [layers, heads] mean attention on the looked-up objects' image tokens
    other: torch.Tensor  # [layers, heads] ... on the other objects' image tokens
    asked: Optional[List[float]] = None  # linear-probe accuracy of the asked attribute per layer input
    answer: Optional[List[float]] = None  # ... of the answer's key


def teacher_forced(model: SQLLaVA, enc: TextEncoder, case: LookupCase) -> Tuple[torch.Tensor, Batch, int]:
    """The case's `v1` sample with its reference answer, decoded in one pass: the logits [1,T,V]
    over [prefix, image tokens, rest], the batch, and the prefix's length."""
    first, pieces = v1_pieces(case.question.text, case.question.answer)
    b = collate([Sample("v1", first, pieces, case.scene)], [case.pixels], enc)
    with torch.no_grad():
        pre = model.embed(b.prefix_ids[None])
        x = torch.cat([pre, model.encode_images(b.pixels), model.embed(b.rest_ids)], 1)
        t = x.shape[1]
        logits, _ = model.decode(x, torch.ones(1, t, dtype=torch.long), torch.arange(t)[None])
    return logits, b, pre.shape[1]


def measure(model: SQLLaVA, enc: TextEncoder, cases: Sequence[LookupCase], probe: bool = False) -> LookupReport:
    """Teacher-forced answers, attention shares at the key word and (`probe`, LOOKUP_FORMS only:
    the others have no single asked attribute or answer key) the linear probes."""
    if probe and cases[0].question.form not in LOOKUP_FORMS:
        raise ValueError(f"--probe reads one asked attribute and answer key: {', '.join(LOOKUP_FORMS)} only")
    layers = [layer.self_attn for layer in model.model.layers]
    grid = model.cfg.vision.grid_size
    n_img = grid * grid
    own = other = None
    right, states, labels, keys = 0, [], [], []
    for m in layers:
        m.keep_attention = True
    try:
        for case in cases:
            q = case.question
            at = key_position(enc, q)
            hidden: List[torch.Tensor] = []
            hooks = [layer.register_forward_pre_hook(lambda _m, args: hidden.append(args[0][0]))
                     for layer in model.model.layers] if probe else []
            try:
                logits, b, tp = teacher_forced(model, enc, case)
            finally:
                for h in hooks:
                    h.remove()
            loss_at = tp + n_img - 1 + b.labels[0].nonzero().flatten()
            right += bool((logits[0, loss_at].argmax(-1) == b.rest_ids[0, b.labels[0]]).all())
            targets = patch_targets([case.scene], grid)
            objects = targets.shape[0] != len(SHAPES)
            mine = torch.zeros_like(objects)
            for o in case.targets:
                mine |= object_patches(targets, SHAPES.index(o.shape), COLOURS.index(o.colour))[0]
            p = tp + n_img + at
            att = torch.stack([m.attention[0, :, p, tp:tp + n_img] for m in layers])  # [L,H,N]
            o, r = (att * mine).sum(-1), (att * (objects & ~mine)).sum(-1)
            own = o if own is None else own + o
            other = r if other is None else other + r
            if probe:
                states.append(torch.stack([h[p] for h in hidden]))
                labels.append(asked_label(q))
                keys.append(answer_label(q))
    finally:
        for m in layers:
            m.keep_attention, m.attention = False, None
    n = len(cases)
    asked = answer = None
    if probe:
        at = torch.stack(states)
        asked, answer = probe_accuracy(at, torch.tensor(labels)), probe_accuracy(at, torch.tensor(keys))
    return LookupReport(cases[0].question.form, n, right / n, own / n, other / n, asked, answer)


def asked_label(q: Question) -> int:
    """The attribute the question names: the shape (colour_of_shape) or the colour (the others)."""
    if q.form == "colour_of_shape":
        return SHAPES.index(q.slots["shape"])
    colour = q.slots["colour"] if q.form == "shape_of_colour" else q.slots["obj"].split(" ")[0]
    return COLOURS.index(colour)


def answer_label(q: Question) -> int:
    """The answer's key: the colour, shape, grid place or size of the object asked about."""
    return ANSWER_KEYS[q.form].index(q.key)


def probe_accuracy(states: torch.Tensor, labels: torch.Tensor, train: float = 0.75, steps: int = 300) -> List[float]:
    """Held-out accuracy of a linear probe per layer: `states` [N,L,H], `labels` [N]."""
    n = int(len(labels) * train)
    k = int(labels.max()) + 1
    out = []
    for layer in range(states.shape[1]):
        x = states[:, layer]
        x = (x - x[:n].mean(0)) / (x[:n].std(0) + 1e-5)
        w = torch.zeros(x.shape[1], k, requires_grad=True)
        bias = torch.zeros(k, requires_grad=True)
        opt = torch.optim.Adam([w, bias], lr=0.05)
        for _ in range(steps):
            loss = F.cross_entropy(x[:n] @ w + bias, labels[:n]) + 1e-3 * (w ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out.append(((x[n:] @ w + bias).argmax(-1) == labels[n:]).float().mean().item())
    return out


@dataclass
class CellReport:
    """A relation answer's cells, teacher-forced (`measure_cells`), "empty" and "occupied" apart."""
    n: Dict[str, int]
    next_right: Dict[str, float]  # the token after the cell's "there is" ("nothing" / "a") is the argmax
    words_right: float  # occupied cells: every token of the object's mention ("a small blue square") too
    attention: Dict[str, float]  # the lookup heads' share on the cell: its object's tokens, or its patches


def relation_cell_cases(n_scenes: int, size: int, start: int = 3_000, per_scene: int = 3) -> List[LookupCase]:
    """Relations asked uniformly: up to `per_scene` random (object, relation) pairs of each test
    scene whose relation passes through at least one cell (the evaluation asks more relations that
    name an object, and many whose reference is at the edge)."""
    cases = []
    for i in range(start, start + n_scenes):
        scene, rng = scene_for("test", i), random.Random(i)
        pairs = [(o, r) for o in scene.objects for r in RELATIONS if cells_towards(o.cell, r)]
        pixels = preprocess_image(render_augmented(scene, rng, strength=0.0), size)
        for o, rel in rng.sample(pairs, min(per_scene, len(pairs))):
            slots = {"rel": rel, "obj": o.ref}
            answer, key = answer_for(scene, "relation", slots)
            q = Question("relation", PHRASINGS["relation"][0].format(**slots), slots, answer, key)
            cases.append(LookupCase(scene, q, looked_up(scene, q), pixels))
    return cases


def measure_cells(model: SQLLaVA, enc: TextEncoder, cases: Sequence[LookupCase], layer: int = 1) -> CellReport:
    """At each cell of each reference relation answer: is what follows "there is" predicted, and
    where do the heads of `layer`'s first KV group (the ones the lookup stage teaches) look."""
    grid = model.cfg.vision.grid_size
    n_img = grid * grid
    heads = list(range(model.cfg.text.num_heads // model.cfg.text.num_kv_heads))
    attn = model.model.layers[layer].self_attn
    n, nxt, share, words = Counter(), Counter(), Counter(), 0
    attn.keep_attention = True
    try:
        for case in cases:
            q, scene = case.question, case.scene
            logits, b, tp = teacher_forced(model, enc, case)
            pred, ids = logits[0, tp + n_img:].argmax(-1), b.rest_ids[0]
            targets = patch_targets([scene], grid)
            at = scene.by_cell()
            for cell, prefix in cell_prefixes(scene, q):
                p = prefix_position(enc, q.text, prefix)
                kind = "occupied" if cell in at else "empty"
                n[kind] += 1
                nxt[kind] += int(pred[p] == ids[p + 1])
                if cell in at:
                    o = at[cell]
                    mention = re.match(r" [^;.]*", q.answer[len(prefix):]).group(0)  # " a small blue square"
                    k = len(enc.rest([(mention, False)])[0])
                    words += int(torch.equal(pred[p:p + k], ids[p + 1:p + 1 + k]))
                    looked = object_patches(targets, SHAPES.index(o.shape), COLOURS.index(o.colour))[0]
                else:
                    looked = torch.zeros(n_img, dtype=torch.bool)
                    looked[list(cell_patches(scene, grid, cell))] = True
                share[kind] += float((attn.attention[0, heads, tp + n_img + p, tp:tp + n_img] * looked).sum(-1).mean())
    finally:
        attn.keep_attention, attn.attention = False, None
    kinds = ("empty", "occupied")
    return CellReport(dict(n), {k: nxt[k] / max(1, n[k]) for k in kinds}, words / max(1, n["occupied"]),
                      {k: share[k] / max(1, n[k]) for k in kinds})


def format_cells(r: CellReport) -> str:
    return "\n".join(
        [f"relation cells (teacher-forced): empty {r.n.get('empty', 0)}, occupied {r.n.get('occupied', 0)}"]
        + [f"  {k}: next word right {r.next_right[k] * 100:.1f}%, lookup heads' attention on the cell "
           f"{r.attention[k]:.3f}" for k in ("empty", "occupied")]
        + [f"  occupied: the object's words right {r.words_right * 100:.1f}%"])


def format_report(r: LookupReport) -> str:
    lines = [f"{r.form}: answer right (teacher-forced) {r.answer_right * 100:.1f}% of {r.n}"]
    for layer in range(r.own.shape[0]):
        heads = "  ".join(f"h{h} {r.own[layer, h]:.2f}/{r.other[layer, h]:.2f}" for h in range(r.own.shape[1]))
        lines.append(f"  layer {layer} own/other: {heads}")
    if r.asked is not None:
        lines.append("  asked attribute readable at layer inputs: " +
                     " ".join(f"{a * 100:.0f}%" for a in r.asked))
    if r.answer is not None:
        lines.append("  answer readable at layer inputs: " + " ".join(f"{a * 100:.0f}%" for a in r.answer))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/sq-llava-micro", help="bundle folder or training checkpoint")
    ap.add_argument("--forms", nargs="+", default=list(LOOKUP_FORMS), choices=LOOKUP_FORMS + MULTI_FORMS)
    ap.add_argument("--scenes", type=int, default=150)
    ap.add_argument("--probe", action="store_true", help="also probe the asked attribute at each layer")
    ap.add_argument("--relation-cells", action="store_true",
                    help="instead: relations asked uniformly, read cell by cell (`measure_cells`)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.probe and set(args.forms) - set(LOOKUP_FORMS):
        ap.error(f"--probe reads one asked attribute and answer key: forms {', '.join(LOOKUP_FORMS)} only")
    torch.set_num_threads(args.threads)
    model = load_any(args.model)
    enc = TextEncoder(LlamaTokenizer.from_file())
    if args.relation_cells:
        print(format_cells(measure_cells(model, enc, relation_cell_cases(args.scenes, model.cfg.vision.image_size))))
        return 0
    for form in args.forms:
        cases = lookup_cases(form, args.scenes, model.cfg.vision.image_size)
        print(format_report(measure(model, enc, cases, probe=args.probe)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
