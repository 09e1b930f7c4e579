#!/usr/bin/env bash
# Device call: stage the last part, install the wheels, start bench/gpu/pipeline.py in the
# background (its own session, so it outlives this call) and wait for it (bench/gpu/wait.sh).
# When InternLM2's files were staged (bench/gpu/prepare.py --internlm2-files), the run builds the
# model in InternLM2's layout, and teambot runs on the transformers a user's install resolves
# (staged as transformers-user/, installed apart and put first on PYTHONPATH).
set -eu
W=/tmp/tb
bash bench/gpu/stage.sh
rm -rf $W/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $W/site $W/stage/*.whl 2>&1 | tail -3
rm -rf $W/repo && mkdir -p $W/repo && cp -r bench bot config inference rag tests examples $W/repo/
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cpu PYTHONPATH=$W/site:$W/repo HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -c "import lmdeploy, chromadb, llama_index.core, pydantic_settings, openai, jieba, transformers; print('imports ok, lmdeploy', lmdeploy.__version__, 'image transformers', transformers.__version__)"
ARGS=""
if [ -d $W/stage/internlm2-files ]; then
  # sentencepiece: the image's 0.2.2 cannot read InternLM2's tokenizer.model; a user's install resolves 0.2.3 (both halves use it)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $W/site $W/stage/transformers-user/sentencepiece-*.whl 2>&1 | tail -3
  rm -rf $W/tf; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $W/tf $W/stage/transformers-user/*.whl 2>&1 | tail -3
  export USER_TRANSFORMERS=$W/tf PYTHONPATH=$W/tf:$PYTHONPATH
  python3 -c "import transformers; print('user transformers', transformers.__version__)"
  ARGS="--internlm2 $W/stage/internlm2-files ${PIPELINE_ARGS:-}"
fi
cd $W/repo && rm -f $W/done && setsid nohup python3 -m bench.gpu.pipeline --work $W $ARGS > $W/pipeline.log 2>&1 < /dev/null &
exec bash bench/gpu/wait.sh "${1:-500}"
