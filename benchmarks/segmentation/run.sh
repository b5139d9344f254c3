#!/bin/bash
# The commands that made results.{json,md,png} (12 epochs) and 24_epochs/results.{json,md,png}, from the repository
# root, on the 2-core machine (2 worker processes of 1 thread). About 2 h 20 min of wall time in all.
set -e
W=${WORK_DIR:-runs/segmentation12}
M="full linear bitfit ln_tuning partial1 lora adapter adaptformer mona"
G="3e-3 1e-2 3e-2 1e-1"
# 1. The grid on seed 0 (the 1e-1 column was added after most methods chose 3e-2, the top of the first grid).
python scripts/benchmark_dense.py --methods $M --seeds 0 --lr_grid $G --num_train_epochs 12 --work_dir "$W" \
    --output_dir "$W/grid"
# 2. Seeds 1 and 2 at each method's rate chosen on seed 0's validation mIoU.
for m in $M; do
    lr=$(python -c "import json; print(json.load(open('$W/grid/results.json'))['learning_rates']['$m']['chosen_lr'])")
    python scripts/benchmark_dense.py --methods "$m" --seeds 1 2 --lr_grid "$lr" --num_train_epochs 12 \
        --work_dir "$W" --output_dir "$W/seeds"
done
# 3. The report.
python scripts/benchmark_dense.py --methods $M --lr_grid $G --num_train_epochs 12 --report_only --work_dir "$W" \
    --output_dir benchmarks/segmentation
# 4. The schedule-length check: Mona and full fine-tuning (the paper's comparison), 24 epochs at their 12-epoch
#    rates, seeds 0-2 (the session ran seed 0 of both side by side, then seeds 1-2 in one pool; the rows are the same).
W24=${WORK_DIR_24:-runs/segmentation24}
python scripts/benchmark_dense.py --methods mona --seeds 0 1 2 --lr_grid 3e-2 --num_train_epochs 24 --work_dir "$W24" \
    --output_dir "$W24/out"
python scripts/benchmark_dense.py --methods full --seeds 0 1 2 --lr_grid 3e-3 --num_train_epochs 24 --work_dir "$W24" \
    --output_dir "$W24/out"
python scripts/benchmark_dense.py --methods full mona --lr_grid 3e-3 3e-2 --num_train_epochs 24 --report_only \
    --work_dir "$W24" --output_dir benchmarks/segmentation/24_epochs
