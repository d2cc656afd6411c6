#!/bin/sh
# Run 7: run 6 continued on a CPU with relation answers that go cell by cell ("To the left of the
# red circle at the top right: at the top, there is nothing; at the top left, there is a small
# blue square."), then existence and count-by-attribute lookups (training/README.md, "Session 10").
# Each step is a plain `training.train` run of the lookup stage alone.
#
#   training/scripts/run7.sh RUN6_PT [OUT_DIR]
#
# RUN6_PT is run 6's soup (run6.sh's PR.pt, which keeps the probes), or the bundle folder of the
# commit before run 7 (its weights read back from ONNX; the probes then start afresh). About
# 1 h 35 min on one core. Every step resumes from its own checkpoint if interrupted.
set -eu
RUN6=${1:?"run 6's PR.pt (training/scripts/run6.sh) or its bundle folder"}
OUT=${2:-runs/run7}
PY=/usr/bin/python3
lookup() { $PY -m training.train --schedule lookup_short --start lookup --threads 1 --workers 1 "$@"; }
MIX="--set lookup_lr=2e-4 --set lookup_captions=0.7 --set place_probe=1"
# relations cell by cell: half of the lookups are relations
lookup --init-from "$RUN6" --out "$OUT/C" --set lookup_steps=450 $MIX \
  --set lookup_forms=colour_of_shape,shape_of_colour,position,size,relation,relation,relation,relation
# then a quarter relations, an eighth each existence and count by attribute
lookup --init-from "$OUT/C/lookup.pt" --out "$OUT/A" --set lookup_steps=900 $MIX \
  --set lookup_forms=colour_of_shape,shape_of_colour,position,size,relation,relation,existence,count_by_attribute
$PY -c "import sys; from training.bundle import export_micro; export_micro(sys.argv[1], 'models/sq-llava-micro', command='training/scripts/run7.sh')" "$OUT/A/final.pt"
