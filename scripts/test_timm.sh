#!/usr/bin/env bash
# The timm cases of the test suite, in a venv of their own (.venv-timm, or $MONA_PEFT_TIMM_VENV).
#
# timm needs torchvision, and the only torchvision wheels for these machines come with a CUDA build of torch (2.14.1,
# which runs on the CPU): installed beside the main environment's CPU torch 2.13.0 they would replace it or break
# transformers' imports. So the main suite skips its timm cases and this script runs them where timm imports (every
# test whose name or parameters say timm): the checklist on timm's ViT, Swin and ConvNeXt inside transformers'
# TimmWrapperModel, plain timm models, the float64 block references and the docs' timm blocks. It reuses the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MONA_PEFT_TIMM_VENV:-.venv-timm}"
start=$(date +%s)
[ -x "$venv/bin/python" ] || python -m venv "$venv"
"$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1 "timm>=1.0,<1.1" "pytest>=8"
"$venv/bin/pip" install -q -e ".[test]"
echo "timm venv ready in $(($(date +%s) - start)) s ($(du -sh "$venv" | cut -f1))"
"$venv/bin/python" -m pytest -q -p no:cacheprovider -k timm
