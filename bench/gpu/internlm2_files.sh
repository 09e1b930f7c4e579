#!/usr/bin/env bash
# Writes OUT with InternLM2's third-party files, read from local clones of InternLM's public
# repositories (never committed to teambot): the InternLM2.5 configuration and modeling code
# (InternLM/xtuner at 98c193e3, xtuner/_lite/modelings/internlm2/) and the tokenizer code and
# real tokenizer.model (InternLM/InternEvo at c628a8c8).
#     bash bench/gpu/internlm2_files.sh XTUNER_CLONE INTERNEVO_CLONE OUT
set -eu
xtuner=$1 internevo=$2 out=$3
mkdir -p "$out"
for f in configuration_internlm2.py modeling_internlm2.py; do
  git -C "$xtuner" show "98c193e3:xtuner/_lite/modelings/internlm2/$f" > "$out/$f"
done
for f in tokenization_internlm2.py tokenization_internlm2_fast.py; do
  git -C "$internevo" show "c628a8c8:transformers/internlm2_model/$f" > "$out/$f"
done
git -C "$internevo" show c628a8c8:tools/tokenizer_internlm2.model > "$out/tokenizer.model"
ls -l "$out"
