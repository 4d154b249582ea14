#!/bin/sh
# The issue-3 benchmark exactly as it was run for docs/results.md (2 cores: two 1-thread queues).
#   sh bench/issue3.sh tune      validation sweeps (lr for DiCycle and the sequential baselines, then δ)
#   sh bench/issue3.sh q1        o2o-sim DiCycle + DIN, then ml-100k DiCycle and its five ablations
#   sh bench/issue3.sh q2a       ml-100k: SASRec and TiSASRec (at most 12 epochs; SASRec seed 2 is its own file)
#   sh bench/issue3.sh q2b       ml-100k: GRU4Rec and Time-LSTM (at most 12 epochs)
#   sh bench/issue3.sh abl2      a second ablation queue (seeds 2, 3)
#   sh bench/issue3.sh abl3      seed 3 of the ablations, two queues
#   sh bench/issue3.sh o2o       o2o-sim: GRU4Rec, SASRec, Time-LSTM, TiSASRec (seeds 1-3, at most 12 epochs)
#   sh bench/issue3.sh o2oabl    o2o-sim: DiCycle w/o ATC and w/o RTC (seeds 1-3)
#   sh bench/issue3.sh o2oabl2   o2o-sim: the other three ablations, w/o TCM, w/o gate, J=0 (seeds 1-3)
#   sh bench/issue3.sh explain   o2o-sim seed 1: DiCycle and "+target head -month" trained, then `edgerec explain`
#   sh bench/issue3.sh insttune  Instacart: lr of DIN and DiCycle on validation, then seeds 1-3 at the chosen lr
#   sh bench/issue3.sh ext       o2o-sim, seed 1: the head / month-slot extensions (docs/results.md, explain)
#   (SASRec seed 2 on ml-100k ran alone into ctr_ml100k_attn_s2.json, beside q2a, on 2026-11-28)
#   sh bench/issue3.sh instseq   Instacart: GRU4Rec and Time-LSTM (at most 12 epochs)
#   sh bench/issue3.sh instattn  Instacart: SASRec and TiSASRec, seed-major (at most 12 epochs)
#   sh bench/issue3.sh instabl   Instacart: the five Table-3 ablations of DiCycle (seeds 1-3)
#   sh bench/issue3.sh omega     o2o-sim seed 1: Fourier frequencies at lr/100 and frozen, then `edgerec explain`
#   sh bench/issue3.sh merge     one table per dataset from the queues' result files
# Every step is resumable (--resume skips finished runs); seeds 1-3, L = 50.
set -e
PY=${PY:-python}
T="--set train.threads=1"
R=bench/results
case "$1" in
  tune)
    $PY bench/tune_lr.py --models DiCycle --values 0.001,0.003,0.01 --epochs 8 $T --resume --out $R/lr_sweep_ml100k_dicycle.json
    $PY bench/tune_lr.py --models SASRec --values 0.001 --epochs 8 $T --resume --out $R/lr_sweep_ml100k_attn.json
    $PY bench/tune_lr.py --models GRU4Rec --epochs 8 $T --resume --out $R/lr_sweep_ml100k_rnn.json
    $PY bench/tune_lr.py --models DiCycle --param model_args.gate_threshold --values 0.0,0.3,0.6 --epochs 8 $T \
        --set train.lr=0.01 --resume --out $R/delta_sweep_ml100k.json ;;
  q1)
    $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models DiCycle --lens 50 $T --resume \
        --no-docs --out $R/ctr_o2osim_dicycle.json
    # DIN seed 1 is the preliminary run (identical configuration), merged from ctr_o2osim_prelim.json
    $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models DIN --lens 50 --seeds 2,3 $T --resume \
        --no-docs --out $R/ctr_o2osim_din.json
    $PY bench/ctr.py --dataset ml-100k --suffix ml100k --models DiCycle --lens 50 $T --resume \
        --no-docs --out $R/ctr_ml100k_dicycle.json
    $PY bench/ctr.py --dataset ml-100k --suffix ml100k --models DiCycle --ablations all --lens 50 $T --resume --seed-major \
        --no-docs --out $R/ctr_ml100k_dicycle.json ;;
  q2a)  # SASRec seed 2 ran beside this queue into its own file, so SASRec here is seeds 1 and 3
    $PY bench/ctr.py --dataset ml-100k --suffix ml100k --models SASRec --lens 50 --seeds 1,3 $T --set train.epochs=12 \
        --resume --no-docs --out $R/ctr_ml100k_attn.json
    $PY bench/ctr.py --dataset ml-100k --suffix ml100k --models TiSASRec --lens 50 $T --set train.epochs=12 \
        --resume --no-docs --out $R/ctr_ml100k_attn.json ;;
  q2b)
    $PY bench/ctr.py --dataset ml-100k --suffix ml100k --models GRU4Rec,TimeLSTM --lens 50 $T --set train.epochs=12 --seed-major \
        --resume --no-docs --out $R/ctr_ml100k_rnn.json ;;
  abl2)  # a second ablation queue (seeds 2 and 3), run beside q1 when the baselines were cut short
    $PY bench/ctr.py --dataset ml-100k --suffix ml100k --models "" --ablations all --lens 50 --seeds 2,3 --seed-major \
        $T --resume --no-docs --out $R/ctr_ml100k_abl2.json ;;
  abl3)  # seed 3 of the ablations in two queues (how the budget was split at the end)
    $PY bench/ctr.py --dataset ml-100k --suffix ml100k --models "" --ablations="w/o ATC,w/o RTC,w/o TCM" --lens 50 \
        --seeds 3 $T --resume --no-docs --out $R/ctr_ml100k_abl3a.json &
    $PY bench/ctr.py --dataset ml-100k --suffix ml100k --models "" --ablations="w/o gate,J=0" --lens 50 \
        --seeds 3 $T --resume --no-docs --out $R/ctr_ml100k_abl3b.json
    wait ;;
  ext)
    for v in "+target head" "+target head -month" "-month"; do
      $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models "" --ablations="$v" --lens 50 --seeds 1 $T \
          --resume --no-docs --out $R/ctr_o2osim_head.json
    done ;;
  o2o)  # o2o-sim: the sequential baselines, GRU4Rec first (the strongest on ml-100k), at most 12 epochs
    for m in GRU4Rec SASRec TimeLSTM TiSASRec; do
      $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models $m --lens 50 $T --set train.epochs=12 \
          --resume --no-docs --out $R/ctr_o2osim_seq.json
    done ;;
  o2oabl)  # o2o-sim: the two time ablations where the simulator plants cycles (absolute, relative), seeds 1-3
    $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models "" --ablations="w/o ATC,w/o RTC" --lens 50 $T \
        --seed-major --resume --no-docs --out $R/ctr_o2osim_abl.json ;;
  o2oabl2)
    $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models "" --ablations="w/o TCM,w/o gate,J=0" --lens 50 $T \
        --seed-major --resume --no-docs --out $R/ctr_o2osim_abl2.json ;;
  explain)  # the runs behind the explain plots (gap_response, time_preference) in docs/results.md
    $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models DiCycle --lens 50 --seeds 1 $T --resume --no-docs \
        --out $R/ctr_o2osim_explainruns.json
    $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models "" --ablations="+target head -month" --lens 50 --seeds 1 \
        $T --resume --no-docs --out $R/ctr_o2osim_explainruns.json
    for d in runs/bench/DiCycle_o2osim/*-seed1; do $PY -m edgerec.cli explain --run "$d" --samples 256; done ;;
  insttune)  # the sixth Instacart test (docs/results.md): DIN and DiCycle tuned the way COUPA was
    $PY bench/tune_lr.py --models DIN,DiCycle --suffix instacart --values 0.001,0.003,0.01 --seed 1 --epochs 12 \
        $T --set train.progress=false --resume --out $R/lr_sweep_instacart.json
    $PY bench/ctr.py --dataset instacart --suffix instacart --models DIN,DiCycle --lens 50 $T --set train.progress=false \
        --resume --no-docs --out $R/ctr_instacart_tuned.json ;;
  instseq)
    $PY bench/ctr.py --dataset instacart --suffix instacart --models GRU4Rec,TimeLSTM --lens 50 $T --set train.progress=false \
        --set train.epochs=12 --resume --no-docs --out $R/ctr_instacart_seq.json ;;
  instattn)
    $PY bench/ctr.py --dataset instacart --suffix instacart --models SASRec,TiSASRec --lens 50 $T --set train.progress=false \
        --set train.epochs=12 --seed-major --resume --no-docs --out $R/ctr_instacart_attn.json ;;
  instabl)
    $PY bench/ctr.py --dataset instacart --suffix instacart --models "" --ablations all --lens 50 $T \
        --set train.progress=false --seed-major --resume --no-docs --out $R/ctr_instacart_abl.json ;;
  omega)  # does the 24 h relative cycle appear once the frequencies stop wandering? (docs/results.md)
    $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models "" --ablations="omega lr/100,omega frozen" --lens 50 \
        --seeds 1 $T --set train.progress=false --resume --no-docs --out $R/ctr_o2osim_omega.json
    $PY bench/ctr.py --dataset o2o-sim --suffix o2osim --models "" --ablations="+target head -month" --lens 50 \
        --seeds 1 $T --set train.progress=false --set 'train.lr_scale.*omega=0' --resume --no-docs \
        --out $R/ctr_o2osim_omega_head.json
    for f in ctr_o2osim_omega ctr_o2osim_omega_head; do
      for d in $($PY -c "import json; print(' '.join(r['run_dir'] for r in json.load(open('$R/$f.json'))['runs']))"); do
        $PY -m edgerec.cli explain --run "$d" --samples 256 --plots kernel,gap
      done
    done ;;
  merge)
    $PY bench/ctr.py --dataset ml-100k --models DIN,GRU4Rec,SASRec,TiSASRec,TimeLSTM,DiCycle --ablations all --lens 50 \
        --merge $R/ctr_ml100k_dicycle.json,$R/ctr_ml100k_abl2.json,$R/ctr_ml100k_abl3a.json,$R/ctr_ml100k_abl3b.json,$R/ctr_ml100k_attn.json,$R/ctr_ml100k_attn_s2.json,$R/ctr_ml100k_rnn.json,$R/ctr_ml100k.json \
        --out $R/ctr_ml100k_time.json
    $PY bench/ctr.py --dataset o2o-sim --models DIN,GRU4Rec,SASRec,TimeLSTM,TiSASRec,DiCycle \
        --ablations="w/o ATC,w/o RTC,w/o TCM,w/o gate,J=0,+target head,+target head -month,-month" --lens 50 \
        --merge $R/ctr_o2osim_dicycle.json,$R/ctr_o2osim_din.json,$R/ctr_o2osim_prelim.json,$R/ctr_o2osim_head.json,$R/ctr_o2osim_seq.json,$R/ctr_o2osim_abl.json,$R/ctr_o2osim_abl2.json \
        --out $R/ctr_o2osim_time.json
    $PY bench/ctr.py --dataset instacart --models DIN,GRU4Rec,SASRec,TiSASRec,TimeLSTM,DiCycle,COUPA --ablations all --lens 50 \
        --merge $R/ctr_instacart_tuned.json,$R/ctr_instacart_seq.json,$R/ctr_instacart_attn.json,$R/ctr_instacart_coupa_same.json,$R/ctr_instacart_abl.json \
        --out $R/ctr_instacart_all.json ;;
  *) echo "usage: sh bench/issue3.sh tune|q1|q2a|q2b|abl2|abl3|ext|o2o|o2oabl|o2oabl2|explain|insttune|instseq|instattn|instabl|omega|merge" >&2; exit 2 ;;
esac
