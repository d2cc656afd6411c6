#!/bin/sh
# Run 9: run 8 (the bundle of commit 22c5b8d) continued with its ViT trained again, taught shapes by the
# vision probe, on scenes drawn wide or tall more often than the world draws them (training/README.md,
# "Session 14"). Two plain `training.train` runs of the lookup stage alone, then the export:
#   1. probe: a fresh vision probe fitted on run 8's frozen ViT (lookup_trains=vision with the ViT held for
#      the whole run, so the probe is all that moves), 400 x 16 at lr 1e-3; its lookup.pt carries it on;
#   2. leg: everything trained from there (the ViT at half of lr 1e-4, the probe's loss at 0.5, 60% of the
#      PIL scenes redrawn 1.3-1.7:1), R1's caption-heavy mix (session 13), 4,000 x 32.
#
#   training/scripts/run9.sh RUN8 [OUT_DIR]
#
# RUN8 is run 8's bundle folder (models/sq-llava-micro at commit 22c5b8d, its weights read back from
# ONNX) or a final.pt. Step 1 ran on this 2-core machine (9.5 min); step 2 needs a CUDA build of PyTorch
# (python3 below): on one H200, beside another run, with seven rendering workers, it took 5.5 min (0.08 s
# a step). Workers change the speed, not the batches; GPU kernels are not bit-deterministic.
set -eu
RUN8=${1:?"run 8's bundle folder (models/sq-llava-micro at commit 22c5b8d) or final.pt"}
OUT=${2:-runs/run9}
PY=${PY:-python3}
MIX=colour_of_shape,shape_of_colour,position,size,relation,relation,existence,count_by_attribute,cell,cell,cell,cell,caption,caption,caption,caption
lookup() {
  $PY -m training.train --schedule lookup_short --start lookup --sharp-pool 2000 --log-every 100 --val-every 1000 \
    --set place_probe=0 --set lookup_captions=1.0 --set lookup_forms=$MIX "$@"
}
lookup --init-from "$RUN8" --out "$OUT/probe" --threads 2 --workers 1 --set lookup_steps=400 --set lookup_batch=16 \
  --set lookup_lr=1e-3 --set lookup_trains=vision --set lookup_probe=1 --set lookup_vision_hold=100000 --set far_aspect=0.5
lookup --init-from "$OUT/probe/lookup.pt" --out "$OUT/leg" --threads 1 --workers 7 --set lookup_steps=4000 \
  --set lookup_batch=32 --set lookup_lr=1e-4 --set lookup_trains=vision,projector,decoder --set vision_lr_scale=0.5 \
  --set lookup_probe=0.5 --set lookup_vision_hold=100 --set far_aspect=0.6
$PY -c "import sys; from training.bundle import export_micro; export_micro(sys.argv[1], 'models/sq-llava-micro', command='training/scripts/run9.sh')" "$OUT/leg/final.pt"
