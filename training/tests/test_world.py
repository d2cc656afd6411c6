"""The shapes-world generator: deterministic per seed, WORLD.md's rules, language round trips."""

import random
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from training.world.language import (BRIEF_PROMPT, FORMS, PHRASINGS, answer_correct, answer_for, brief_caption,
                                     caption_correct, conversation, detailed_caption, parse_question,
                                     question_validity, sample_question)
from training.world.render import render_augmented, render_pil, render_svg
from training.world.scene import (BACKGROUNDS, BIG_SIDE, COLOURS, POSITIONS, SHAPES, SMALL_SIDE, SPLIT_SEED_BASE,
                                  Scene, object_box, scene_for)

SCENES = [scene_for("train", i) for i in range(400)]


def test_deterministic_per_seed():
    a, b = scene_for("val", 17), scene_for("val", 17)
    assert a.to_dict() == b.to_dict()
    assert scene_for("val", 17).to_dict() != scene_for("val", 18).to_dict()
    img1 = np.asarray(render_augmented(a, random.Random(3)))
    img2 = np.asarray(render_augmented(b, random.Random(3)))
    assert img1.shape == img2.shape and (img1 == img2).all()
    r1, r2 = random.Random(5), random.Random(5)
    assert [sample_question(a, r1).text for _ in range(5)] == [sample_question(b, r2).text for _ in range(5)]
    assert Scene.from_dict(a.to_dict()).to_dict() == a.to_dict()


def test_splits_are_disjoint():
    bases = sorted(SPLIT_SEED_BASE.values())
    assert all(b - a >= 10 ** 9 for a, b in zip(bases, bases[1:]))
    assert scene_for("train", 0).seed != scene_for("test", 0).seed


def test_world_rules():
    n_objects = set()
    for s in SCENES:
        assert s.background in BACKGROUNDS
        assert 1 <= len(s.objects) <= 4
        n_objects.add(len(s.objects))
        pairs = [(o.colour, o.shape) for o in s.objects]
        assert len(set(pairs)) == len(pairs), "no two objects share colour and shape"
        cells = [o.cell for o in s.objects]
        assert len(set(cells)) == len(cells), "at most one object per cell"
        for o in s.objects:
            assert o.shape in SHAPES and o.colour in COLOURS and o.colour != s.background
            assert o.size in ("small", "big") and 0 <= o.cell < 9 and abs(o.rotation) <= 15
            lo, hi = SMALL_SIDE if o.size == "small" else BIG_SIDE
            assert lo <= o.side <= hi
            # the object stays inside its grid cell
            w, h = (200, round(200 / s.aspect)) if s.aspect >= 1 else (round(200 * s.aspect), 200)
            cx, cy, side = object_box(s, o, w, h)
            assert o.col * w / 3 - 1e-6 <= cx - side / 2 and cx + side / 2 <= (o.col + 1) * w / 3 + 1e-6
            assert o.row * h / 3 - 1e-6 <= cy - side / 2 and cy + side / 2 <= (o.row + 1) * h / 3 + 1e-6
    assert n_objects == {1, 2, 3, 4}
    assert BIG_SIDE[0] >= 2 * SMALL_SIDE[1], "a big bounding box is at least twice a small one's side"


def test_render_shows_objects_in_their_cells():
    s = SCENES[3]
    img = np.asarray(render_pil(s, 150), np.int32)
    h, w, _ = img.shape
    for o in s.objects:
        cx, cy, _ = object_box(s, o, w, h)
        px = img[int(cy), int(cx)]
        assert np.abs(px - np.asarray(o.rgb)).max() < 30, (o, px)


def test_svg_is_well_formed_and_complete():
    for s in SCENES[:20]:
        root = ET.fromstring(render_svg(s, 224))
        shapes = [e for e in root if e.tag.endswith("polygon") or e.tag.endswith("circle")]
        assert len(shapes) == len(s.objects)
        assert root.attrib["width"] and root.attrib["height"]


def test_language_round_trip():
    forms_seen = set()
    for i, s in enumerate(SCENES[:200]):
        rng = random.Random(i)
        assert caption_correct(s, brief_caption(s, rng))
        assert caption_correct(s, detailed_caption(s, rng))
        for _ in range(6):
            q = sample_question(s, rng)
            forms_seen.add(q.form)
            parsed = parse_question(q.text)
            assert parsed == (q.form, q.slots), q.text
            assert question_validity(s, q.text)[0]
            assert answer_correct(q.form, q.key, q.answer), (q.text, q.answer, q.key)
    assert forms_seen == set(FORMS)
    assert all(len(p) >= 2 for p in PHRASINGS.values()), "several phrasings per form"


def test_answer_checker_rejects_wrong_answers():
    s = next(s for s in SCENES if len(s.objects) == 3)
    o = s.objects[0]
    other_colour = next(c for c in COLOURS if c != o.colour)
    assert not caption_correct(s, "A big red circle.")
    assert not answer_correct("count", "three", "There are two shapes.")
    assert not answer_correct("colour_of_shape", o.colour, f"The {o.shape} is {other_colour}.")
    assert not answer_correct("position", "top", "The red circle is at the top left.")
    assert answer_correct("position", "top left", "The red circle is at the top left.")
    assert answer_correct("background", "light blue", "The background is light blue.")
    assert not answer_correct("background", "blue", "The background is light blue.")
    assert answer_correct("count_by_attribute", "no", "There are no red shapes.")
    assert answer_correct("relation", "green star", "A small green star is to the left of the red circle.")
    assert not answer_correct("relation", "nothing", "A small green star is to the left of the red circle.")
    cells = "To the left of the red circle at the top right: at the top, there is nothing; at the top left, there is"
    assert answer_correct("relation", "green star", cells + " a small green star.")
    assert not answer_correct("relation", "nothing", cells + " a small green star.")  # "nothing" and an object
    assert answer_correct("relation", "nothing", cells + " nothing.")
    assert not answer_correct("relation", "green star", cells + " nothing.")


def test_self_question_validity():
    s = SCENES[0]
    o = s.objects[0]
    assert question_validity(s, f"Where is the {o.ref}?")[0]
    absent = next(f"{c} {sh}" for c in COLOURS for sh in SHAPES if not s.find(colour=c, shape=sh))
    assert not question_validity(s, f"Where is the {absent}?")[0]  # about an object not there
    assert question_validity(s, f"Is there a {absent}?")[0]  # existence may ask about absent ones
    assert not question_validity(s, "What is the meaning of life?")[0]


def test_conversations():
    for i, s in enumerate(SCENES[:50]):
        turns = conversation(s, random.Random(i))
        assert 2 <= len(turns) <= 4
        assert len({q for q, _ in turns}) == len(turns)


def test_answers_name_the_object_asked_about_before_the_choice():
    """Every place takes "at the" (the place is chosen at the place word), and a relation answer
    names its reference object and its place, then goes cell by cell, nearest first, saying what
    is in each (each step a lookup of one place)."""
    from training.world.language import answer_for, cells_towards, where
    from training.world.scene import POSITIONS
    assert [where(p) for p in POSITIONS] == [f"at the {p}" for p in POSITIONS]
    assert cells_towards(8, "to the left of") == [7, 6] and cells_towards(0, "below") == [3, 6]
    assert cells_towards(4, "above") == [1] and cells_towards(2, "to the right of") == []
    for s in SCENES[:200]:
        at = {o.cell: o for o in s.objects}
        for o in s.objects:
            for rel in ("to the left of", "to the right of", "above", "below"):
                ans, key = answer_for(s, "relation", {"obj": o.ref, "rel": rel})
                lead = f"{rel[0].upper()}{rel[1:]} the {o.ref} {where(o.cell)}"
                cells = cells_towards(o.cell, rel)
                said = [f"{where(c)}, there is {'nothing' if c not in at else 'a'}" for c in cells]
                assert ans.startswith(lead) and [p for p in said if p not in ans] == []
                assert (key == "nothing") == all(c not in at for c in cells)
                assert answer_correct("relation", key, ans) and (key == "nothing" or not answer_correct(
                    "relation", "nothing", ans))
