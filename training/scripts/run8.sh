#!/bin/sh
# Run 8: run 7 (the bundle of commit 6b37213) continued on a CUDA GPU with run 7's lookup mix and
# cell questions ("What is at the top left?"), 7,600 steps of 32 in three legs, then the export
# (training/README.md, "Session 12"). Each leg is a plain `training.train` run of the lookup stage
# alone; the place probe starts afresh in each, as it did when run 8 was made.
#
#   training/scripts/run8.sh RUN7 [OUT_DIR]
#
# RUN7 is run 7's final.pt (training/scripts/run7.sh) or its bundle folder (models/sq-llava-micro at
# commit 6b37213, its weights read back from ONNX). Needs a CUDA build of PyTorch (python3 below):
# on one H200 the legs took 4.3, 4.3 and 1.6 min of training (0.06-0.07 s a step). The first two ran
# beside another run on the same GPU, six rendering workers each, the third alone with twelve;
# workers change the speed, not the batches. The sharp pool is cut to its first 2,000 images, as
# the run was made (a smaller upload to the GPU host); they are the same images runs/cache holds.
# Every leg resumes from its own checkpoint if interrupted.
set -eu
RUN7=${1:?"run 7's final.pt (training/scripts/run7.sh) or its bundle folder"}
OUT=${2:-runs/run8}
PY=${PY:-python3}
lookup() {
  $PY -m training.train --schedule lookup_short --start lookup --threads 2 --sharp-pool 2000 --log-every 100 \
    --val-every 500 --set lookup_batch=32 --set lookup_lr=2e-4 --set lookup_captions=0.7 --set place_probe=1 \
    --set lookup_forms=colour_of_shape,shape_of_colour,position,size,relation,relation,existence,count_by_attribute,cell,cell,cell,cell \
    "$@"
}
lookup --init-from "$RUN7" --out "$OUT/P" --workers 6 --set lookup_steps=3000
lookup --init-from "$OUT/P/final.pt" --out "$OUT/PP" --workers 6 --set lookup_steps=3000
lookup --init-from "$OUT/PP/final.pt" --out "$OUT/PPP" --workers 12 --set lookup_steps=1600
$PY -c "import sys; from training.bundle import export_micro; export_micro(sys.argv[1], 'models/sq-llava-micro', command='training/scripts/run8.sh')" "$OUT/PPP/final.pt"
