"""A few training steps on tiny data decrease the loss; loss masks and generation are right."""

import random

import pytest
import torch

from training.data import TextEncoder, collate, full_text, make_sample, preprocess_image, v1_sq_pieces
from training.sqllava.conversation import sq_training_text
from training.sqllava.tokenizer import LlamaTokenizer
from training.probe import PatchProbe, patch_targets, probe_loss
from training.train import Data, Schedule, build_model, candidates_for, lm_loss
from training.world.render import render_pil
from training.world.scene import scene_for


@pytest.fixture(scope="module")
def tok():
    return LlamaTokenizer.from_file("training/assets/llama-tokenizer.json")


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
    batches = [data.lm_batch(2, 0, 4, 0.5)[0], data.lm_batch(2, 1, 4, 0.5)[0]]
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
    """The whole `python -m training.train` loop on the tiny preset: the three stages with batches
    rendered in a worker process, then a rerun that finds the finished run and does not retrain."""
    from training.train import main
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--schedule", "smoke", "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--sharp-pool", "8", "--threads", "1", "--workers", "1", "--log-every", "2", "--val-every", "3"]
    main(args)
    log = capsys.readouterr().out
    for stage in (0, 1, 2):
        assert f"[stage {stage}] step" in log
        assert (out / f"stage{stage}.pt").exists()
    assert "probe on validation scenes: shape" in log
    assert "[stage 2] val loss v1" in log
    assert (out / "final.pt").exists()
    main(args)
    assert "exists; skipping training" in capsys.readouterr().out
