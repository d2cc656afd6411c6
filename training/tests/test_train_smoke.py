"""A few training steps on tiny data decrease the loss; loss masks and generation are right."""

import dataclasses
import random

import pytest
import torch

from training.data import TextEncoder, collate, full_text, make_sample, preprocess_image, v1_sq_pieces
from training.sqllava.conversation import sq_training_text
from training.sqllava.tokenizer import LlamaTokenizer
from training.probe import PatchProbe, patch_targets, probe_loss
from training.train import SCHEDULES, Data, Schedule, build_model, candidates_for, lm_loss
from training.world.language import DETAILED_PROMPT
from training.world.render import render_pil
from training.world.scene import scene_for


@pytest.fixture(scope="module")
def tok():
    return LlamaTokenizer.from_file("training/assets/llama-tokenizer.json")


def train_tiny(tmp_path, model, next_stage: int, schedule: str, *args: str):
    """`training.train` on the tiny preset, from `model`'s weights saved as a checkpoint whose
    next stage is `next_stage`; returns the run folder."""
    from training import train as T
    from training.sqllava.configs import config_to_dict
    init = tmp_path / "init.pt"
    torch.save({"model": model.state_dict(), "config": config_to_dict(model.cfg), "next_stage": next_stage}, init)
    out = tmp_path / "run"
    T.main(["--preset", "tiny", "--schedule", schedule, "--init-from", str(init), "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--sharp-pool", "8", "--threads", "1", "--workers", "0", *args])
    return out


def lookup_only(**fields) -> Schedule:
    """The smoke schedule cut to two lookup steps (lr 1e-3, the ViT at the full rate where it
    trains), with `fields` changed: for checking what one lookup stage moves."""
    return dataclasses.replace(SCHEDULES["smoke"], vision_steps=0, language_steps=0, align_steps=0, instruct_steps=0,
                               focus_steps=0, lookup_steps=2, lookup_lr=1e-3, vision_lr_scale=1.0, warmup=1, **fields)


def test_v1_sq_layout_and_loss_mask(tok):
    turns = [("USER", "How many shapes are there?", "There are two shapes."),
             ("VUSER", "What color is the star?", "The star is red."),
             ("USER", "Is there a blue square?", "No, there is no blue square.")]
    first, pieces = v1_sq_pieces(turns)
    assert full_text(first, pieces) == sq_training_text(turns)
    enc = TextEncoder(tok)
    ids, labels = enc.rest(pieces)
    assert enc.inexact == 0
    target_text = tok.decode([i for i, l in zip(ids, labels) if l], skip_special=False)
    # loss on answers and on the VUSER question (each with its </s>), not on USER questions or role names
    assert "There are two shapes.</s>" in target_text.replace(" </s>", "</s>")
    assert "What color is the star?" in target_text
    assert "How many" not in target_text and "blue square?" not in target_text
    assert "ASSISTANT" not in target_text and "VUSER" not in target_text
    assert sum(1 for i, l in zip(ids, labels) if l and i == 2) == 4  # three answers + one VUSER question


def test_no_sq_variant_masks_questions(tok):
    turns = [("USER", "How many shapes are there?", "There are two shapes."),
             ("VUSER", "What color is the star?", "The star is red.")]
    _, pieces = v1_sq_pieces(turns, loss_on_questions=False)
    ids, labels = TextEncoder(tok).rest(pieces)
    assert "What color" not in tok.decode([i for i, l in zip(ids, labels) if l])


def test_few_steps_decrease_loss(tok):
    torch.manual_seed(0)
    model = build_model("tiny", "full")
    enc = TextEncoder(tok)
    data = Data(model.cfg, enc, seed=0, sched=Schedule(p_sharp=0.0), sharp=None)
    batches = [data.lm_batch("instruct", 0, 4, 0.5)[0], data.lm_batch("instruct", 1, 4, 0.5)[0]]
    assert {b.template for b in batches} == {"v1", "v1_sq"}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = [lm_loss(model, b).item() for b in batches]
    for step in range(12):
        b = batches[step % 2]
        cand = candidates_for(torch.arange(3, 40), b.rest_ids[b.labels], 32000, 100, step) if step % 3 else None
        loss = lm_loss(model, b, candidates=cand)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = [lm_loss(model, b).item() for b in batches]
    assert all(l < f - 0.3 for f, l in zip(first, last)), (first, last)


def test_vision_pretraining_step_decreases_loss():
    torch.manual_seed(0)
    model = build_model("tiny", "full")
    probe = PatchProbe(model.cfg.vision.hidden_size)
    scenes = [scene_for("train", i) for i in range(6)]
    pix = torch.stack([preprocess_image(render_pil(s, 80), 56) for s in scenes])
    targets = patch_targets(scenes, 4)
    opt = torch.optim.AdamW(list(model.model.vision_tower.parameters()) + list(probe.parameters()), lr=3e-3)

    def loss_fn():
        return probe_loss(probe(model.model.vision_tower(pix)), targets)

    first = loss_fn().item()
    for _ in range(10):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn().item() < first


def test_batched_generation_matches_step_by_step():
    from training.evaluate import Session
    torch.manual_seed(1)
    model = build_model("tiny", "full").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        rows = [model.embed(torch.randint(3, 32000, (n,))[None])[0] for n in (5, 9)]
        s = Session(model, rows)
        s.append([[7, 8, 9], [11]])
        got = s.generate(4)
        for r, extra, g in zip(rows, ([7, 8, 9], [11]), got):
            ids = list(extra)
            out = []
            for _ in range(4):
                emb = torch.cat([r, model.embed(torch.tensor(ids)[None])[0]])[None]
                t = emb.shape[1]
                logits, _ = model.decode(emb, torch.ones(1, t, dtype=torch.long), torch.arange(t)[None])
                nxt = int(logits[0, -1].argmax())
                out.append(nxt)
                ids.append(nxt)
                if nxt == 2:
                    break
            assert out == g


def test_training_command_runs_every_stage_and_resumes(tmp_path, capsys):
    """The whole `python -m training.train` loop on the tiny preset: the four stages with batches
    rendered in a worker process, then a rerun that finds the finished run and does not retrain."""
    from training.train import main
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--schedule", "smoke", "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--sharp-pool", "8", "--threads", "1", "--workers", "1", "--log-every", "2", "--val-every", "3"]
    main(args)
    log = capsys.readouterr().out
    for stage in ("vision", "language", "align", "instruct", "focus", "lookup"):
        assert f"[{stage}] step" in log
        assert (out / f"{stage}.pt").exists()
    assert "probe on validation scenes: shape" in log
    assert "[language] val loss v1" in log and "[instruct] val loss v1" in log
    assert (out / "final.pt").exists()
    main(args)
    assert "exists; skipping training" in capsys.readouterr().out
    # an ablation shares the stages before align, whatever its projector (no_proto: a plain MLP)
    abl = tmp_path / "no_proto"
    main(["--variant", "no_proto", "--init-from", str(out / "language.pt"), "--out", str(abl)]
         + args[:4] + args[6:])
    log = capsys.readouterr().out
    assert "stages before align shared from" in log and "[language] step" not in log
    assert (abl / "final.pt").exists()


def test_lookup_keep_ends_between_before_and_after_the_stage(tmp_path, monkeypatch):
    """`lookup_keep`: the final weights are that share of the way from the weights the lookup
    stage started from to those it ended with (lookup.pt)."""
    import dataclasses
    from training import train as T
    model = T.build_model("tiny", "full")
    monkeypatch.setitem(T.SCHEDULES, "keep", dataclasses.replace(T.SCHEDULES["smoke"], lookup_keep=0.25))
    out = train_tiny(tmp_path, model, T.STAGES.index("lookup"), "keep")
    before, after = model.state_dict(), torch.load(out / "lookup.pt")["model"]
    final = torch.load(out / "final.pt")["model"]
    moved = [k for k in final if not torch.equal(before[k], after[k])]
    assert moved  # the stage trained something
    for k in final:
        torch.testing.assert_close(final[k], before[k] + 0.25 * (after[k] - before[k]))


def _manual_loss(model, batch, row_embeddings):
    """Cross-entropy of each labelled token, from one plain forward pass per unpadded row."""
    losses = []
    for i, emb in enumerate(row_embeddings):
        t = emb.shape[0]
        logits, _ = model.decode(emb[None], torch.ones(1, t, dtype=torch.long), torch.arange(t)[None])
        n_rest = int(batch.rest_mask[i].sum())
        rest = batch.rest_ids[i, :n_rest]
        lab = batch.labels[i, :n_rest]
        start = t - n_rest  # first rest token's position in the row
        for j in torch.nonzero(lab)[:, 0].tolist():
            losses.append(torch.nn.functional.cross_entropy(logits[0, start + j - 1][None], rest[j][None]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("stage", ["language", "instruct"])
def test_lm_loss_equals_plain_forward(tok, stage):
    """The batched loss (shared prefix KV, padding, image or text scenes) is the plain next-token
    loss of each sequence: no target is shifted by one."""
    torch.manual_seed(0)
    model = build_model("tiny", "full").eval()
    data = Data(model.cfg, TextEncoder(tok), seed=0, sched=Schedule(p_sharp=0.0), sharp=None)
    batch, _ = data.lm_batch(stage, 1, 3, 0.5)
    pre = model.embed(batch.prefix_ids[None])[0]
    rows = []
    for i in range(batch.rest_ids.shape[0]):
        rest = model.embed(batch.rest_ids[i, :int(batch.rest_mask[i].sum())][None])[0]
        img = [] if batch.pixels is None else [model.model.mm_projector(model.model.vision_tower(batch.pixels[i:i + 1]))[0]]
        rows.append(torch.cat([pre, *img, rest]))
    with torch.no_grad():
        assert lm_loss(model, batch).item() == pytest.approx(_manual_loss(model, batch, rows).item(), rel=1e-4)


def test_language_stage_gives_the_scene_as_text(tok):
    """The language stage's samples carry no image: the scene is written out before the question,
    and it is context, never a loss target."""
    model = build_model("tiny", "full")
    enc = TextEncoder(tok)
    data = Data(model.cfg, enc, seed=0, sched=Schedule(p_sharp=0.0), sharp=None)
    batch, targets = data.lm_batch("language", 0, 4, 0.5)
    assert batch.pixels is None and targets is None
    for i, scene in enumerate(batch.scenes):
        ids = batch.rest_ids[i, :int(batch.rest_mask[i].sum())].tolist()
        text = tok.decode(ids)
        context = text.split("\n")[0]
        for o in scene.objects:
            assert f"{o.colour} {o.shape}" in context
        targets_text = tok.decode([t for t, l in zip(ids, batch.labels[i].tolist()) if l])
        assert context not in targets_text


def test_evaluation_reads_text_scenes_as_the_language_stage_trains(tok):
    """`evaluate --text` builds the same token sequence the language stage trains on."""
    from training.data import scene_text
    from training.evaluate import Prompter
    from training.sqllava.conversation import SYSTEM_V1
    model = build_model("tiny", "full")
    enc = TextEncoder(tok)
    scene = scene_for("test", 3)
    context = scene_text(scene, random.Random(0))
    q = "How many shapes are there?"
    row = Prompter(model, tok, contexts=[context]).rows(SYSTEM_V1, [0], [q])[0]
    ids, _ = enc.rest([(context + "\n" + q + " ASSISTANT:", False)])
    want = model.embed(torch.tensor(enc.first_chunk(SYSTEM_V1 + " USER: ") + ids)[None])[0]
    assert torch.equal(row, want)


def test_language_stage_can_ask_one_question_per_scene(tok):
    model = build_model("tiny", "full")
    data = Data(model.cfg, TextEncoder(tok), seed=0, sched=Schedule(p_sharp=0.0, language_ask=1.0), sharp=None)
    for step in (0, 1):
        batch, _ = data.lm_batch("language", step, 3, 0.5)
        assert batch.template == "v1" and batch.pixels is None
        for i in range(3):
            ids = batch.rest_ids[i, :int(batch.rest_mask[i].sum())].tolist()
            text = tok.decode(ids)
            assert text.count("ASSISTANT:") == 1 and "?" in text.split("ASSISTANT:")[0]


@pytest.mark.parametrize("stage", ["language", "focus"])
def test_stages_can_hold_long_question_only_conversations(tok, stage):
    """`language_turns` / `focus_turns`: v1_sq batches become that many questions about the scene
    (written out, or an image), with no description turn (every answer a lookup)."""
    model = build_model("tiny", "full")
    sched = Schedule(p_sharp=0.0, language_turns=6, focus_turns=6)
    data = Data(model.cfg, TextEncoder(tok), seed=0, sched=sched, sharp=None)
    batch, targets = data.lm_batch(stage, 1, 3, 0.5)
    assert batch.template == "v1_sq"
    assert (batch.pixels is None) == (stage == "language") and (targets is None) == (stage == "language")
    for i in range(3):
        text = tok.decode(batch.rest_ids[i, :int(batch.rest_mask[i].sum())].tolist())
        assert text.count("ASSISTANT:") == 6
        assert DETAILED_PROMPT not in text


def test_batches_and_targets_move_to_the_training_device(tok):
    """Every tensor of a batch and of the probe's targets moves (here to the meta device, which
    stands in for a GPU); scenes and per-object lists stay as they are."""
    from training.train import to_device
    model = build_model("tiny", "full")
    data = Data(model.cfg, TextEncoder(tok), seed=0, sched=Schedule(p_sharp=0.0), sharp=None)
    # a DataLoader hands the (batch, targets) tuple back as a list
    batch, targets = to_device(list(data.lm_batch("instruct", 0, 2, 0.5)), torch.device("meta"))
    for b in (batch, targets):
        for name, v in vars(b).items():
            if isinstance(v, torch.Tensor):
                assert v.device.type == "meta", name
    assert batch.scenes and targets.objects and batch.template in ("v1", "v1_sq")


def test_lookup_stage_batches_and_losses(tok):
    """lookup: even steps are questions about one object with where each answer's key word is
    predicted; the attention loss falls to ~0 when the heads look only at that object, and the
    word alignment is small when the image tokens are their object's words."""
    from training.grounding import lookup_attention_loss, word_align_loss, word_ids
    from training.world.scene import COLOURS, POSITIONS, SHAPES
    model = build_model("tiny", "full")
    enc = TextEncoder(tok)
    data = Data(model.cfg, enc, seed=0, sched=Schedule(p_sharp=0.0), sharp=None)
    batch, patches = data.lm_batch("lookup", 0, 3, 0.5)
    assert batch.template == "v1" and len(batch.lookup) == 3 and patches is not None
    for i, t in enumerate(batch.lookup):
        before = tok.decode(batch.rest_ids[i, :t.at + 1].tolist())
        key = tok.decode(batch.rest_ids[i, t.at + 1:int(batch.rest_mask[i].sum())].tolist())
        assert " is" in before.split("ASSISTANT:")[1]
        assert key.split()[0].strip(".") in COLOURS + SHAPES + ["big", "small", "top", "bottom", "left", "right",
                                                              "center"]
    assert [data.lm_batch("lookup", k, 2, 0.5)[0].template for k in (1, 3)] == ["v1", "v1_sq"]
    assert data.lm_batch("lookup", 1, 2, 0.5)[0].lookup is None
    # attention that sits on each asked-about object's tokens, or spreads evenly
    n, tp = patches.shape.shape[1], len(batch.prefix_ids)
    t = batch.rest_ids.shape[1]
    assert all(len(lt.objects) == 1 for lt in batch.lookup)
    own = torch.stack([(patches.shape[i] == lt.objects[0][0]) & (patches.colour[i] == lt.objects[0][1])
                       for i, lt in enumerate(batch.lookup)]).float()
    att = torch.full((3, 4, n + t, tp + n + t), 1.0 / (tp + n + t))
    spread = lookup_attention_loss(att, batch.lookup, patches, tp, [0, 1])
    for i, lt in enumerate(batch.lookup):
        att[i, :, n + lt.at] = 0
        att[i, :, n + lt.at, tp:tp + n] = own[i] / own[i].sum()
    assert lookup_attention_loss(att, batch.lookup, patches, tp, [0, 1]) < 1e-5 < spread
    # image tokens that are their object's shape word + colour word
    emb = model.model.embed_tokens
    shapes, colours = word_ids(enc, SHAPES), word_ids(enc, COLOURS)
    w = lambda ids: emb.weight[ids].mean(0)  # noqa: E731
    tokens = torch.randn(3, n, emb.weight.shape[1])
    for i in range(3):
        for j in range(n):
            if patches.shape[i, j] < len(SHAPES):
                tokens[i, j] = w(shapes[patches.shape[i, j]]) + w(colours[patches.colour[i, j]])
    assert word_align_loss(tokens, patches, emb, shapes, colours) < word_align_loss(
        torch.randn_like(tokens), patches, emb, shapes, colours)
    # with the grid places' words: lower when the tokens also carry their place's words
    cells = word_ids(enc, POSITIONS)
    placed = tokens.clone()
    for i in range(3):
        for j in range(n):
            if patches.shape[i, j] < len(SHAPES):
                placed[i, j] += w(cells[patches.cell[i, j]])
    assert word_align_loss(placed, patches, emb, shapes, colours, cells) < word_align_loss(
        tokens, patches, emb, shapes, colours, cells)


def test_place_probe_trains_with_the_projector_and_is_not_exported(tmp_path, monkeypatch, capsys):
    """`place_probe`: the stages that train the projector (align and lookup, here) also train a
    linear head that reads each object token's grid cell; it is checkpointed with the run and
    left out of the final weights."""
    import dataclasses
    from training import train as T
    from training.grounding import PlaceProbe, place_probe_loss
    monkeypatch.setitem(T.SCHEDULES, "placed", dataclasses.replace(
        T.SCHEDULES["smoke"], vision_steps=0, language_steps=0, align_steps=30, align_lr=3e-3, instruct_steps=0,
        focus_steps=0, lookup_steps=2, place_probe=1.0, warmup=1))
    model = T.build_model("tiny", "full")
    out = train_tiny(tmp_path, model, T.STAGES.index("align"), "placed")
    assert "[align] place probe on validation scenes:" in capsys.readouterr().out
    align, lookup = torch.load(out / "align.pt"), torch.load(out / "lookup.pt")
    assert set(align["place"]) == {"cell.weight", "cell.bias"}
    assert not torch.equal(align["place"]["cell.weight"], lookup["place"]["cell.weight"])  # lookup trains it too
    final = torch.load(out / "final.pt")
    assert "place" not in final and not any("place" in k or k.startswith("cell.") for k in final["model"])
    assert set(final["model"]) == set(model.state_dict())
    # the loss reads object tokens only, and is ~0 for tokens that carry their cell where the head looks
    scenes = [scene_for("train", 500 + i) for i in range(4)]
    targets = patch_targets(scenes, 4)
    probe = PlaceProbe(9)
    with torch.no_grad():
        probe.cell.weight.copy_(torch.eye(9) * 20)
        probe.cell.bias.zero_()
    cells = torch.randint(0, 9, targets.cell.shape)
    cells[targets.cell >= 0] = targets.cell[targets.cell >= 0]
    carried = torch.nn.functional.one_hot(cells, 9).float()
    assert place_probe_loss(probe, carried, targets) < 1e-3
    assert place_probe_loss(probe, torch.randn(4, 16, 9), targets) > 1.0
    background = carried.clone()
    background[targets.cell < 0] = torch.randn(int((targets.cell < 0).sum()), 9)
    torch.testing.assert_close(place_probe_loss(probe, background, targets), place_probe_loss(probe, carried, targets))


def test_lookup_stage_draws_the_schedules_forms(tok):
    """`lookup_forms`: the lookup stage's questions are of those forms only."""
    from training.world.scene import POSITIONS
    model = build_model("tiny", "full")
    data = Data(model.cfg, TextEncoder(tok), seed=0, sched=Schedule(p_sharp=0.0, lookup_forms=("position",)), sharp=None)
    for step in (0, 2, 4):
        batch, _ = data.lm_batch("lookup", step, 4, 0.5)
        for i, t in enumerate(batch.lookup):
            answer = tok.decode(batch.rest_ids[i, :int(batch.rest_mask[i].sum())].tolist()).split("ASSISTANT:")[1]
            assert answer.strip().startswith("The ") and any(f" {p}." in answer for p in POSITIONS), answer


def test_relation_lookups_look_at_every_object_named_and_skip_nothing_answers(tok):
    """lookup_forms with "relation": the attention loss asks for the objects a relation's answer
    names (all of them together) and leaves out the rows answered "nothing"."""
    from training.grounding import lookup_attention_loss
    model = build_model("tiny", "full")
    data = Data(model.cfg, TextEncoder(tok), seed=0, sched=Schedule(p_sharp=0.0, lookup_forms=("relation",)), sharp=None)
    batches = [data.lm_batch("lookup", step, 4, 0.5) for step in range(0, 16, 2)]
    mixed = [(b, p) for b, p in batches if 0 < sum(bool(lt.objects) for lt in b.lookup) < 4]
    assert mixed  # some relations answer "nothing", some name objects
    batch, patches = mixed[0]
    n, tp, t = patches.shape.shape[1], len(batch.prefix_ids), batch.rest_ids.shape[1]
    att = torch.full((4, 2, n + t, tp + n + t), 1.0 / (tp + n + t))
    for i, lt in enumerate(batch.lookup):
        own = torch.zeros(n, dtype=torch.bool)
        for shape, colour in lt.objects:
            own |= (patches.shape[i] == shape) & (patches.colour[i] == colour)
        if own.any():  # all attention on the named objects, shared between them
            att[i, :, n + lt.at] = 0
            att[i, :, n + lt.at, tp:tp + n] = own.float() / own.sum()
    assert lookup_attention_loss(att, batch.lookup, patches, tp, [0, 1]) < 1e-5
    empty = [dataclasses.replace(lt, objects=()) for lt in batch.lookup]
    assert lookup_attention_loss(att, empty, patches, tp, [0, 1]) == 0


def test_relation_cells_give_each_row_one_target_per_cell_and_the_loss_reads_each_at_its_row(tok):
    """`relation_cells`: a batch's relation rows carry one target per cell (its object's tokens or
    the empty cell's patches); attention put exactly there costs nothing, attention spread does."""
    from training.grounding import lookup_attention_loss
    model = build_model("tiny", "full")
    sched = Schedule(p_sharp=0.0, lookup_forms=("relation",), relation_cells=True)
    data = Data(model.cfg, TextEncoder(tok), seed=0, sched=sched, sharp=None)
    batch, patches = data.lm_batch("lookup", 0, 6, 0.5)
    rows = [t.row for t in batch.lookup]
    assert rows == sorted(rows) and len(rows) > len(set(rows))  # some rows go through two cells
    assert any(t.region for t in batch.lookup) and any(t.objects for t in batch.lookup)
    n, tp, t = patches.shape.shape[1], len(batch.prefix_ids), batch.rest_ids.shape[1]
    att = torch.full((6, 2, n + t, tp + n + t), 1.0 / (tp + n + t))
    spread = lookup_attention_loss(att, batch.lookup, patches, tp, [0, 1])
    for lt in batch.lookup:
        own = torch.zeros(n, dtype=torch.bool)
        for shape, colour in lt.objects:
            own |= (patches.shape[lt.row] == shape) & (patches.colour[lt.row] == colour)
        own[list(lt.region)] = True
        att[lt.row, :, n + lt.at] = 0
        att[lt.row, :, n + lt.at, tp:tp + n] = own.float() / own.sum()
    assert lookup_attention_loss(att, batch.lookup, patches, tp, [0, 1]) < 1e-5 < spread


def test_lookup_captions_turns_the_stages_single_turn_samples_into_captions(tok):
    """`lookup_captions`: that share of the lookup stage's v1 instruct samples are captions."""
    from training.world.language import BRIEF_PROMPT, DETAILED_PROMPT
    model = build_model("tiny", "full")

    def prompts(share):
        data = Data(model.cfg, TextEncoder(tok), seed=0, sched=Schedule(p_sharp=0.0, lookup_captions=share), sharp=None)
        batch, _ = data.lm_batch("lookup", 1, 8, 0.5)  # step 1: instruct's v1 samples
        assert batch.template == "v1"
        texts = [tok.decode(batch.rest_ids[i, :int(batch.rest_mask[i].sum())].tolist()) for i in range(8)]
        return [BRIEF_PROMPT in t or DETAILED_PROMPT in t for t in texts]

    assert all(prompts(1.0))
    assert not all(prompts(0.0))


def test_start_runs_a_stage_again_from_a_finished_runs_checkpoint(tmp_path, monkeypatch):
    """`--start lookup` with `--init-from` a checkpoint saved after the lookup stage runs it again."""
    from training import train as T
    model = T.build_model("tiny", "full")
    out = train_tiny(tmp_path, model, len(T.STAGES), "smoke", "--start", "lookup")
    assert [p.name for p in sorted(out.glob("*.pt"))] == ["ckpt.pt", "final.pt", "lookup.pt"]
    after = torch.load(out / "final.pt")["model"]
    assert any(not torch.equal(model.state_dict()[k], after[k]) for k in after)


def test_set_changes_schedule_fields_by_their_type():
    from training.train import SCHEDULES, with_settings
    s = with_settings(SCHEDULES["lookup_short"], ["lookup_steps=500", "lookup_lr=2e-4", "lookup_captions=0.7",
                                                  "lookup_forms=position,relation", "word_align_cell=1"])
    assert (s.lookup_steps, s.lookup_lr, s.lookup_captions) == (500, 2e-4, 0.7)
    assert s.lookup_forms == ("position", "relation") and s.word_align_cell is True
    assert SCHEDULES["lookup_short"].lookup_steps == 400  # the named schedule is unchanged
    assert with_settings(SCHEDULES["lookup_short"], ["lookup_forms=relation,shared_count,caption,cell"]).lookup_forms == (
        "relation", "shared_count", "caption", "cell")  # lookup-only forms
    for bad in ("lookup_stepz=5", "lookup_steps", "lookup_forms=position,where", "focus_forms=shared_count",
                "focus_forms=caption", "focus_forms=cell"):
        with pytest.raises(SystemExit):
            with_settings(SCHEDULES["lookup_short"], [bad])


def test_init_from_a_bundle_folder_continues_the_committed_model(tmp_path):
    """`--init-from models/sq-llava-micro --start lookup`: the bundle's own weights, read back from
    its ONNX files, are where the stage starts; without --start it is refused."""
    from training import train as T
    from training.bundle import load_any
    out = tmp_path / "cont"
    args = ["--preset", "micro", "--schedule", "smoke", "--init-from", "models/sq-llava-micro", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--sharp-pool", "8", "--threads", "1", "--workers", "0"]
    with pytest.raises(SystemExit, match="needs --start"):
        T.main(args)
    T.main(args + ["--start", "lookup", "--set", "lookup_steps=1", "--set", "lookup_lr=0"])
    before = load_any("models/sq-llava-micro").state_dict()
    after = torch.load(out / "final.pt")["model"]
    # what no graph uses is not in the bundle (CLIP's last layer, post_layernorm, ln_1): initialised
    unused = ("vision_model.encoder.layers.4.", "vision_model.post_layernorm", "mm_projector.ln_1")
    held = [k for k in after if not any(u in k for u in unused)]
    assert before.keys() == after.keys() and len(held) > 100
    assert all(torch.equal(before[k], after[k]) for k in held)


@pytest.mark.parametrize("trains", [("vision",), ("vision", "projector", "decoder")])
def test_lookup_trains_names_the_parts_the_lookup_stage_moves(tmp_path, monkeypatch, trains):
    """`lookup_trains`: the lookup stage trains the ViT only where it is named (runs 5-8 froze it),
    with gradients through the frozen rest; an unknown part is refused."""
    from training import train as T
    monkeypatch.setitem(T.SCHEDULES, "looked", lookup_only(lookup_trains=trains))
    torch.manual_seed(0)
    model = T.build_model("tiny", "full")
    out = train_tiny(tmp_path, model, T.STAGES.index("lookup"), "looked")
    before, after = model.state_dict(), torch.load(out / "final.pt")["model"]
    moved = {k.split(".")[1] for k in before if k.startswith("model.") and not torch.equal(before[k], after[k])}
    assert "vision_tower" in moved
    assert moved == ({"vision_tower"} if trains == ("vision",) else {"vision_tower", "mm_projector", "layers",
                                                                       "embed_tokens", "norm"})
    probe, place = T.PatchProbe(model.cfg.vision.hidden_size), T.PlaceProbe(model.cfg.text.hidden_size)
    main = {id(p) for p in T.trained_parameters(model, probe, "lookup", place, trains)["main"]}
    assert all(id(p) in main for p in place.parameters())  # the place probe learns whatever else is frozen
    with pytest.raises(SystemExit, match="lookup_trains"):
        T.trained_parameters(model, probe, "lookup", None, ("eyes",))


@pytest.mark.parametrize("hold", [0, 2])
def test_lookup_probe_teaches_the_vit_after_the_probe_is_held_alone(tmp_path, monkeypatch, capsys, hold):
    """`lookup_probe`: a lookup stage that trains the ViT adds the vision probe's loss and reports its
    accuracy; for `lookup_vision_hold` steps only the probe (and the rest) move, the ViT waits."""
    from training import train as T
    monkeypatch.setitem(T.SCHEDULES, "probed", lookup_only(lookup_trains=("vision", "projector", "decoder"),
                                                         lookup_probe=0.5, lookup_vision_hold=hold))
    torch.manual_seed(0)
    model = T.build_model("tiny", "full")
    out = train_tiny(tmp_path, model, T.STAGES.index("lookup"), "probed")
    before, after = model.state_dict(), torch.load(out / "final.pt")
    vit_moved = any(not torch.equal(before[k], after["model"][k]) for k in before if ".vision_tower." in k)
    assert vit_moved == (hold == 0)
    assert any(not torch.equal(before[k], after["model"][k]) for k in before if ".mm_projector." in k)
    assert "[lookup] probe on validation scenes: shape" in capsys.readouterr().out


def test_far_aspect_redraws_only_that_share_of_scenes_wide_or_tall():
    """`far_aspect` 0 leaves the world's mix (and the random stream) as it was; 1 makes every
    PIL-rendered scene 1.3-1.7:1, wide or tall."""
    from training.data import scene_and_image
    from training.world.scene import scene_for
    plain = [scene_and_image(random.Random(i), 32, None)[0] for i in range(12)]
    assert plain == [scene_for("train", random.Random(i).randrange(40_000_000)) for i in range(12)]
    far = [scene_and_image(random.Random(i), 32, None, far_aspect=1.0)[0] for i in range(12)]
    assert all(max(s.aspect, 1 / s.aspect) >= 1.3 - 1e-9 for s in far)
    assert {s.aspect > 1 for s in far} == {True, False}
    assert [s.objects for s in far] == [s.objects for s in plain]  # the same scenes, drawn on another canvas
