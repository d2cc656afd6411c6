"""The lookup diagnostic: where an answer's key word is predicted, and what the heads look at there."""

import random
import re

import pytest
import torch

from training.data import TextEncoder
from training.lookup import LOOKUP_FORMS, format_report, key_prefix, lookup_cases, measure, referent
from training.sqllava.tokenizer import LlamaTokenizer
from training.train import build_model
from training.world.language import sample_question
from training.world.scene import COLOURS, POSITIONS, SHAPES, scene_for


@pytest.fixture(scope="module")
def enc():
    return TextEncoder(LlamaTokenizer.from_file("training/assets/llama-tokenizer.json"))


@pytest.mark.parametrize("form", LOOKUP_FORMS)
def test_key_prefix_stops_right_before_the_answer_key_and_the_referent_is_the_asked_object(form):
    for i in range(40):
        scene = scene_for("test", i)
        try:
            q = sample_question(scene, random.Random(i), form=form)
        except (RuntimeError, ValueError):
            continue
        prefix = key_prefix(q)
        assert q.answer.startswith(prefix) and q.answer[len(prefix):].lstrip().startswith(q.key)
        o = referent(scene, q)
        assert o in scene.objects
        if form == "colour_of_shape":
            assert prefix == f"The {o.shape} is" and q.key == o.colour
        elif form == "shape_of_colour":
            assert q.key == o.shape and o.colour in q.text
        else:
            assert o.ref in q.text


def test_attention_kept_for_diagnostics_is_a_distribution_and_changes_nothing():
    torch.manual_seed(0)
    model = build_model("tiny", "full").eval()
    x = torch.randn(2, 5, model.cfg.text.hidden_size)
    mask, pos = torch.ones(2, 5, dtype=torch.long), torch.arange(5)[None].expand(2, -1)
    plain, _ = model.decode(x, mask, pos)
    attn = model.model.layers[1].self_attn
    attn.keep_attention = True
    kept, _ = model.decode(x, mask, pos)
    assert torch.equal(plain, kept)
    a = attn.attention
    assert a.shape == (2, model.cfg.text.num_heads, 5, 5)
    assert torch.allclose(a.sum(-1), torch.ones(2, model.cfg.text.num_heads, 5))
    assert (a.triu(1) == 0).all()  # causal


def test_measure_reports_attention_shares_per_layer_and_head(enc):
    torch.manual_seed(0)
    model = build_model("tiny", "full").eval()
    cases = lookup_cases("colour_of_shape", 6, model.cfg.vision.image_size)
    assert all(len(c.scene.objects) >= 2 for c in cases)
    r = measure(model, enc, cases, probe=True)
    layers, heads = model.cfg.text.num_layers, model.cfg.text.num_heads
    assert r.own.shape == (layers, heads) and r.other.shape == (layers, heads)
    assert ((r.own >= 0) & (r.own + r.other <= 1 + 1e-5)).all()
    assert r.answer_right == 0.0  # random weights do not answer
    assert len(r.asked) == layers and len(r.answer) == layers
    assert all(not m.self_attn.keep_attention and m.self_attn.attention is None for m in model.model.layers)
    assert "colour_of_shape: answer right (teacher-forced) 0.0% of 6" in format_report(r)
    assert "answer readable at layer inputs:" in format_report(r)


def test_measure_cells_reads_each_cell_of_uniform_relations_at_its_there_is(enc):
    """`--relation-cells`: every cell of every uniform relation answer is counted once, empty or
    occupied; a decoder that predicts the reference's next token everywhere is right on all of
    them, a random one on none of the object mentions."""
    from training.lookup import format_cells, measure_cells, relation_cell_cases
    from training.world.language import cells_towards
    torch.manual_seed(0)
    model = build_model("tiny", "full").eval()
    cases = relation_cell_cases(6, model.cfg.vision.image_size)
    cells = [(c.scene, c.question) for c in cases]
    total = sum(len(cells_towards(named_object(s, q).cell, q.slots["rel"])) for s, q in cells)
    assert len(cases) > 6 and total > len(cases)  # up to three per scene, one or two cells each
    r = measure_cells(model, enc, cases)
    assert r.n["empty"] + r.n.get("occupied", 0) == total
    assert r.words_right == 0.0 and 0 <= r.attention["empty"] <= 1
    table = model.model.embed_tokens.weight.detach()
    decode = model.decode

    def oracle(x, mask, pos, *a, **k):  # logits whose argmax is the token that comes next
        logits, past = decode(x, mask, pos, *a, **k)
        ids = torch.cdist(x[0], table).argmin(-1)  # the rest's tokens are embedding rows exactly
        out = torch.full_like(logits, -1.0)
        out[0, torch.arange(len(ids) - 1), ids[1:]] = 1.0
        return out, past

    model.decode = oracle
    r = measure_cells(model, enc, cases)
    assert r.next_right == {"empty": 1.0, "occupied": 1.0} and r.words_right == 1.0
    assert "occupied: the object's words right 100.0%" in format_cells(r)


def named_object(scene, q):
    colour, shape = q.slots["obj"].split(" ")
    return scene.find(colour=colour, shape=shape)[0]


@pytest.mark.parametrize("form", LOOKUP_FORMS)
def test_the_answer_label_is_the_answer_key(form):
    from training.lookup import answer_label
    from training.world.language import ANSWER_KEYS
    case = lookup_cases(form, 1, 64)[0]
    assert ANSWER_KEYS[form][answer_label(case.question)] == case.question.key


def test_a_relation_answer_looks_up_the_objects_it_names_from_the_word_before_the_first():
    from training.lookup import looked_up
    from training.world.language import related
    seen = {"nothing": 0, "objects": 0}
    for i in range(200):
        scene = scene_for("test", i)
        try:
            q = sample_question(scene, random.Random(i), form="relation")
        except (RuntimeError, ValueError):
            continue
        colour, shape = q.slots["obj"].split(" ")
        asked = scene.find(colour=colour, shape=shape)[0]
        objs = looked_up(scene, q)
        assert objs == related(scene, asked, q.slots["rel"])
        rest = q.answer[len(key_prefix(q)):].lstrip()
        if objs:
            seen["objects"] += 1
            assert rest.lower().startswith(("a ", "an ")) and rest.split(" ", 1)[1].startswith(objs[0].name)
        else:
            seen["nothing"] += 1
            assert rest.startswith("nothing")
    assert min(seen.values()) >= 10, seen


@pytest.mark.parametrize("form", ["existence", "count_by_attribute", "relation"])
def test_existence_counts_and_relations_look_up_what_their_answer_depends_on(form, enc):
    """An existence answer ("Yes"/"No", its first word) looks at the object asked for (none: "no"),
    a count by attribute ("There are" -> "two") at every object it counts, a relation at what it
    names; the position kept is the one whose next token starts the key word."""
    from training.grounding import lookup_sample
    from training.lookup import key_position, looked_up
    from training.world.language import counted
    kinds = set()
    for i in range(60):
        scene = scene_for("test", i)
        rng = random.Random(i)
        try:
            q = sample_question(scene, random.Random(i), form=form)
        except (RuntimeError, ValueError):
            continue
        objs = looked_up(scene, q)
        if form == "existence":
            assert bool(objs) == (q.key == "yes") and all(o.ref == q.slots["obj"] for o in objs)
        elif form == "count_by_attribute":
            assert objs == counted(scene, q.slots) and len(objs) == (0 if q.key == "no" else
                                                                        ["one", "two", "three", "four"].index(q.key) + 1)
        kinds.add(bool(objs))
        ids, _ = enc.rest([("\n" + q.text + " ASSISTANT:", False), (" " + q.answer + "</s>", True)])
        after = enc.tok.decode(ids[key_position(enc, q) + 1:]).strip()
        key = q.key if form != "relation" else ("a" if objs else "nothing")  # "... there is" -> "a big ..."
        assert after.lower().startswith(key), (q.answer, after)
        sample, [target] = lookup_sample(scene, rng, enc, forms=(form,))
        assert target.at < len(enc.rest(sample.pieces)[0])
    assert kinds == {True, False}


def test_relation_cells_look_at_each_cell_the_answer_goes_through(enc):
    """`relation_cells`: a relation answer looks, at each cell's "there is", at the object in that
    cell, or at the empty cell's patches where it says "nothing"; the next token starts what the
    cell holds, and the patches lie inside the cell, on every canvas shape."""
    from training.grounding import lookup_sample
    from training.probe import cell_patches, padded_canvas
    from training.world.language import cells_towards
    seen = {"object": 0, "empty": 0, "edge": 0}
    for i in range(80):
        scene = scene_for("test", i)
        try:
            q = sample_question(scene, random.Random(i), form="relation")
        except (RuntimeError, ValueError):
            continue
        sample, targets = lookup_sample(scene, random.Random(i), enc, forms=("relation",), cell_grid=8,
                                        relation_cells=True)
        assert q.answer in sample.pieces[-1][0]
        colour, shape = q.slots["obj"].split(" ")
        cells = cells_towards(scene.find(colour=colour, shape=shape)[0].cell, q.slots["rel"])
        assert len(targets) == len(cells)
        seen["edge"] += not cells
        ids = enc.rest(sample.pieces)[0]
        at = {o.cell: o for o in scene.objects}
        for cell, t in zip(cells, targets):
            after = enc.tok.decode(ids[t.at + 1:]).strip()
            if cell in at:
                seen["object"] += 1
                assert after.startswith(("a ", "an ")) and after.split(" ", 1)[1].startswith(at[cell].name)
                assert t.objects == ((SHAPES.index(at[cell].shape), COLOURS.index(at[cell].colour)),) and not t.region
            else:
                seen["empty"] += 1
                assert after.startswith("nothing") and not t.objects and t.region
                w, h, x0, y0 = padded_canvas(scene)
                row, col = divmod(cell, 3)
                for k in t.region:
                    x, y = (k % 8 + 0.5) / 8, (k // 8 + 0.5) / 8
                    assert col == int((x - x0) / w * 3) and row == int((y - y0) / h * 3)
    assert min(seen.values()) >= 5, seen
    # every cell of every canvas shape holds at least one patch centre, and the nine partition them
    for i in range(40):
        scene = scene_for("test", i)
        regions = [set(cell_patches(scene, 8, c)) for c in range(9)]
        assert all(regions) and sum(map(len, regions)) == len(set().union(*regions))


def test_cell_questions_ask_one_cell_in_the_relations_words_and_look_at_it(enc):
    """`cell` in lookup_forms: "What is at the top left?" answered with the very words a relation
    answer uses at that cell, looking at "there is" at the cell's object or its empty patches."""
    from training.grounding import CELL, lookup_sample
    from training.world.language import answer_for, cell_question, cells_towards, where
    kinds = set()
    for i in range(60):
        scene = scene_for("test", i)
        rng = random.Random(i)
        rng.choice((CELL,))  # lookup_sample draws the form first
        q = cell_question(scene, rng)
        at = {o.cell: o for o in scene.objects}
        cell = POSITIONS.index(q.slots["cell"])
        assert q.text == f"What is {where(cell)}?"
        # the relation that passes through this cell says the same words there
        for o in scene.objects:
            for rel in ("to the left of", "to the right of", "above", "below"):
                if cell in cells_towards(o.cell, rel):
                    ans, _ = answer_for(scene, "relation", {"rel": rel, "obj": o.ref})
                    assert q.answer[:-1].lower() in ans
        sample, [t] = lookup_sample(scene, random.Random(i), enc, forms=(CELL,), cell_grid=8)
        assert q.answer in sample.pieces[-1][0]
        after = enc.tok.decode(enc.rest(sample.pieces)[0][t.at + 1:]).strip()
        if cell in at:
            kinds.add("object")
            assert after.startswith("a ") and at[cell].name in after and t.objects and not t.region
        else:
            kinds.add("empty")
            assert after.startswith("nothing") and not t.objects and t.region
    assert kinds == {"object", "empty"}


def test_caption_lookups_look_at_each_object_where_its_mention_starts(enc):
    """`caption` in lookup_forms: a brief caption (every phrasing), with one target per object, at
    the article whose next token starts that object's mention ("a" -> "small red star")."""
    from training.grounding import CAPTION, lookup_sample
    from training.world.language import BRIEF_PROMPT, caption_correct
    starts = set()
    for i in range(40):
        scene = scene_for("test", i)
        sample, targets = lookup_sample(scene, random.Random(i), enc, forms=(CAPTION,))
        text, caption = sample.pieces[0][0], sample.pieces[-1][0].replace("</s>", "").strip()
        assert BRIEF_PROMPT in text and caption_correct(scene, caption)
        starts.add("A" if caption.startswith("A ") else "The" if caption.startswith("The ") else "count")
        ids = enc.rest(sample.pieces)[0]
        assert len(targets) == len(scene.objects)
        for t in targets:
            (shape, colour), = t.objects
            after = re.findall(r"\w+", enc.tok.decode(ids[t.at + 1:]))
            assert after[0] in ("small", "big") and after[1:3] == [COLOURS[colour], SHAPES[shape]]
        assert sorted(t.objects[0] for t in targets) == sorted(
            (SHAPES.index(o.shape), COLOURS.index(o.colour)) for o in scene.objects)
    assert len(starts) == 3  # the three phrasings: "A ...", "The image shows ...", "Two shapes ..."


def test_shared_counts_ask_only_counts_of_two_or_more_and_look_at_each_counted_object(enc):
    """`shared_count` lookups are counts by attribute whose answer is two or more (the natural mix
    asks them too rarely), phrased as the natural ones and looking at every object counted."""
    from training.grounding import SHARED_COUNT, lookup_sample
    from training.world.language import answer_correct, counted, parse_question, shared_count_question
    asked = 0
    for i in range(60):
        scene = scene_for("test", i)
        shared = any(len(counted(scene, {"attr": a})) >= 2 for a in {o.colour for o in scene.objects} |
                     {o.size for o in scene.objects}) or len({o.shape for o in scene.objects}) < len(scene.objects)
        try:
            q = shared_count_question(scene, random.Random(i))
        except RuntimeError:
            assert not shared
            continue
        asked += 1
        assert q.form == "count_by_attribute" and q.key in ("two", "three", "four")
        assert parse_question(q.text) == (q.form, q.slots) and answer_correct(q.form, q.key, q.answer)
        sample, [target] = lookup_sample(scene, random.Random(i), enc, forms=(SHARED_COUNT,))
        assert len(target.objects) >= 2
    assert asked >= 20


@pytest.mark.parametrize("form", ["relation", "existence", "count_by_attribute"])
def test_the_diagnostic_measures_answers_that_look_up_several_objects(form, enc):
    from training.lookup import looked_up
    torch.manual_seed(0)
    model = build_model("tiny", "full").eval()
    cases = lookup_cases(form, 4, model.cfg.vision.image_size)
    assert all(c.targets == looked_up(c.scene, c.question) and c.targets for c in cases)
    r = measure(model, enc, cases)
    assert ((r.own >= 0) & (r.own + r.other <= 1 + 1e-5)).all() and r.own.sum() > 0
    with pytest.raises(ValueError, match="--probe"):
        measure(model, enc, cases, probe=True)
