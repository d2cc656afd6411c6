#!/bin/sh
# Run 6: run 5 (`python3 -m training.train --schedule gpu_lookup`, a GPU) continued on a CPU with
# the place probe, position and relation lookups and more captions, then averaged (training/README.md,
# "Session 8"). Each step is a plain `training.train` run of the lookup stage alone.
#
#   training/scripts/run6.sh RUN5_FINAL_PT [OUT_DIR]
#
# About 3 h 20 min on one core: steps in a pair (A B, C D, P R) are independent and were run side by
# side, one thread each. Every step resumes from its own checkpoint if interrupted.
#
# Run 6 spoke the relation phrasing of commit 2adba42 ("To the left of the red circle, there is a
# blue square."): run this script from that commit to make run 6 itself. Its PR.pt is where
# training/scripts/run7.sh (the committed bundle) starts; that commit's run6.sh also exported it.
set -eu
RUN5=${1:?"run 5's final.pt (python3 -m training.train --schedule gpu_lookup --out runs/run5)"}
OUT=${2:-runs/run6}
PY=/usr/bin/python3
lookup() { $PY -m training.train --schedule lookup_short --start lookup --threads 1 --workers 1 "$@"; }
# the place probe on, position then position-only lookups (lr 4e-4, 16 per batch)
lookup --init-from "$RUN5" --out "$OUT/A" --set lookup_steps=450 --set place_probe=1
lookup --init-from "$RUN5" --out "$OUT/B" --set lookup_steps=450
lookup --init-from "$OUT/A/final.pt" --out "$OUT/C" --set lookup_forms=position --set place_probe=1
lookup --init-from "$OUT/B/final.pt" --out "$OUT/D" --set lookup_forms=position
$PY -m training.soup "$OUT/D/lookup.pt" "$OUT/C/lookup.pt" --weight 0.5 --out "$OUT/CD.pt"
# then with 70% of the single-turn samples captions, position (and relation) lookups, lr 2e-4
MIX="--set lookup_lr=2e-4 --set lookup_captions=0.7 --set place_probe=1"
lookup --init-from "$OUT/CD.pt" --out "$OUT/E" --set lookup_steps=500 $MIX \
  --set lookup_forms=colour_of_shape,shape_of_colour,position,size,position,position
lookup --init-from "$OUT/E/lookup.pt" --out "$OUT/P" --set lookup_steps=600 $MIX \
  --set lookup_forms=colour_of_shape,shape_of_colour,position,size,position,position
lookup --init-from "$OUT/E/lookup.pt" --out "$OUT/R" --set lookup_steps=600 $MIX \
  --set lookup_forms=colour_of_shape,shape_of_colour,position,size,position,relation,relation,relation
$PY -m training.soup "$OUT/P/lookup.pt" "$OUT/R/lookup.pt" --weight 0.5 --out "$OUT/PR.pt"
