"""scripts/gpu_benchmark.py is ready for a GPU machine: its dry run on the CPU (tiny geometry) writes the report."""

import json

import pytest
import torch
from conftest import load_script as load


def load_script():
    return load("gpu_benchmark")


def test_dry_run_on_the_cpu_writes_json_and_markdown(tmp_path):
    torch._dynamo.reset()
    script = load_script()
    output = tmp_path / "gpu"
    # The eager backend keeps the dry run short: dynamo still captures the static model whole (fullgraph).
    assert script.main(["--device", "cpu", "--quick", "--compile-backend", "eager", "--output", str(output)]) == 0
    report = json.loads(output.with_suffix(".json").read_text())
    (geometry,) = report["geometries"]
    assert geometry["geometry"] == "tiny" and [row["batch_size"] for row in geometry["rows"]] == [1, 2]
    assert set(geometry["rows"][0]["images_per_second"]) == {name for name, _, _ in script.PASSES}
    assert geometry["gmacs"]["static (executed)"] < geometry["gmacs"]["dense"]
    assert set(geometry["compile_seconds"]) == {"compiled dense", "compiled ATS static"}
    assert geometry["targets"]["static mode never syncs (compiled)"]["met"] is None  # no CUDA here
    markdown = output.with_suffix(".md").read_text()
    assert "| batch | eager dense img/s" in markdown and "not checked: static mode never syncs" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gets")
def test_without_cuda_it_says_what_to_do(capsys):
    assert load_script().main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script().main(["--help"])
    assert exit_.value.code == 0 and "--quick" in capsys.readouterr().out
