#!/usr/bin/env bash
# Set up .venv with the CPU build of torch 2.13.0 (never the multi-GB CUDA build) and ats_hf with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
