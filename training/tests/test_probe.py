"""The vision probe's targets sit where the objects are drawn, padding included."""

import torch

from training.probe import NONE, SUB, patch_targets
from training.world.scene import SHAPES, Scene, SceneObject


def one_object(shape: str, cell: int, aspect: float, size: str = "big", side: float = 0.3) -> Scene:
    obj = SceneObject(shape=shape, colour="red", size=size, cell=cell, side=side, dx=0.0, dy=0.0, rotation=0.0,
                      rgb=(220, 30, 35))
    return Scene(background="white", objects=[obj], aspect=aspect, bg_rgb=(250, 250, 250))


def test_centred_object_labels_the_middle_patches_and_its_outline():
    t = patch_targets([one_object("star", 4, 1.0)], grid=8)
    shape = t.shape[0].view(8, 8)
    assert (shape[3:5, 3:5] == SHAPES.index("star")).all()
    assert (shape[0] == NONE).all() and (shape[:, 0] == NONE).all()
    seg = t.seg[0].view(8, 8, SUB * SUB)
    assert (seg[3:5, 3:5] == SHAPES.index("star")).any()
    assert (seg[0] == NONE).all()
    assert t.single.tolist() == [SHAPES.index("star")]
    assert t.objects[0][0][1] == SHAPES.index("star")
    occupied = t.shape[0] != NONE
    assert (t.cell[0][occupied] == 4).all() and (t.cell[0][~occupied] == -100).all()


def test_wide_canvas_is_padded_to_a_square_before_labelling():
    # aspect 2: the canvas fills rows 2..5 of an 8x8 grid; its top-left cell starts at row 2
    t = patch_targets([one_object("square", 0, 2.0, "small", 0.14)], grid=8)
    rows = (t.shape[0].view(8, 8) != NONE).nonzero()[:, 0]
    assert rows.min() >= 2 and rows.max() <= 3
    assert t.size[0][t.shape[0] != NONE].eq(0).all()


def test_small_object_owns_at_least_one_patch_and_several_scenes_stack():
    scenes = [one_object("heart", 8, 1.0, "small", 0.13), one_object("cross", 2, 0.6)]
    t = patch_targets(scenes, grid=8)
    assert t.shape.shape == (2, 64) and t.seg.shape == (2, 64, SUB * SUB)
    for i, s in enumerate(scenes):
        assert (t.shape[i] == SHAPES.index(s.objects[0].shape)).sum() >= 1
        assert set(t.cell[i][t.shape[i] != NONE].tolist()) == {s.objects[0].cell}
    assert torch.equal(t.background, torch.tensor([0, 0]))
