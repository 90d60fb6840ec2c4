#!/usr/bin/env bash
# Development check: run transformers' own ModelTesterMixin against ATS-ViT, ATS-DeiT, ATS-DINOv2, ATS-CLIP,
# ATS-ViViT and ATS-VideoMAE.
# The source release of the installed transformers version ships tests/test_modeling_common.py but not the two
# mixin modules it imports (exporters/test_export.py, generation/test_utils.py); they are replaced by empty
# stand-ins (no export or generation tests run). Needs PyPI access; writes into .cache/transformers-tests.
# Usage: bash scripts/run_transformers_model_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
version=$($python -c "import transformers; print(transformers.__version__)")
work=.cache/transformers-tests
tree=$work/transformers-$version
if [ ! -d "$tree/tests" ]; then
    mkdir -p "$work"
    $python -m pip download -q --no-deps --no-binary :all: "transformers==$version" -d "$work"
    tar xzf "$work/transformers-$version.tar.gz" -C "$work" "transformers-$version/tests"
fi
$python -m pip install -q parameterized
tests=$tree/tests
rm -rf "$tests/models/ats"  # this run's copies only
mkdir -p "$tests/exporters" "$tests/generation" "$tests/utils" "$tests/models/ats"
touch "$tests/__init__.py" "$tests/exporters/__init__.py" "$tests/generation/__init__.py" "$tests/utils/__init__.py" \
    "$tests/models/__init__.py" "$tests/models/ats/__init__.py"
echo "class ExportTesterMixin: pass" > "$tests/exporters/test_export.py"
echo "class GenerationTesterMixin: pass" > "$tests/generation/test_utils.py"
[ -f "$tests/utils/test_configuration_utils.py" ] || echo "config_common_kwargs = {}" > "$tests/utils/test_configuration_utils.py"
cp scripts/transformers_model_tests/*.py "$tests/models/ats/"
cd "$tree"
OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 ../../../$python -m pytest -q -p no:cacheprovider -c /dev/null --rootdir . tests/models/ats "$@"
