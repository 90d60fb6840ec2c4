"""The `ats-hf` launcher and the lean core: fast help without torch, `import ats_hf` without the tooling, and one-line
errors (exit status 2, no traceback) for every expected user mistake."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ats_hf_cli import SUBCOMMANDS, build_parser, main

TOOLING = ("matplotlib", "datasets", "evaluate", "sklearn", "accelerate", "tqdm")


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line, which is returned."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_and_bad_commands_never_import_torch():
    seen = run_python(
        "import contextlib, io, json, sys\n"
        "from ats_hf_cli import main\n"
        "codes = []\n"
        "for argv in (['--help'], [], ['bench']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:\n"
        "        codes.append(main(argv))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'ats_hf') if m in sys.modules)\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy, 'help': out.getvalue(), 'error': err.getvalue()}))\n"
    )
    assert seen["codes"] == [0, 2, 2] and seen["heavy"] == []
    assert seen["error"].startswith("ats-hf: error: argument COMMAND: invalid choice: 'bench'")


def test_the_installed_command_answers_help_without_torch():
    script = Path(sys.executable).with_name("ats-hf")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPROFILEIMPORTTIME": "1", "PATH": ""})
    assert done.returncode == 0 and all(name in done.stdout for name in SUBCOMMANDS)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "ats_hf_cli" in imported and "torch" not in imported and "ats_hf" not in imported


def test_import_ats_hf_loads_the_model_but_not_the_tooling():
    # transformers itself may import some tooling packages (tqdm, and accelerate when installed); ats_hf must add none.
    seen = run_python(
        "import json, sys\n"
        "import torch, transformers\n"
        "from transformers import AutoModelForImageClassification\n"
        "import transformers.models.vit.modeling_vit\n"
        "before = set(sys.modules)\n"
        "import ats_hf\n"
        "added = sorted({m.split('.')[0] for m in set(sys.modules) - before})\n"
        "own = sorted(m for m in sys.modules if m.startswith('ats_hf'))\n"
        f"tooling = sorted(m for m in {TOOLING!r} if m in sys.modules)\n"
        "lazy = ats_hf.save_ats_checkpoint.__module__\n"
        "print(json.dumps({'added': added, 'own': own, 'tooling': tooling, 'lazy': lazy}))\n"
    )
    assert not set(seen["added"]) & set(TOOLING), seen["added"]
    assert not {"matplotlib", "datasets", "evaluate", "sklearn"} & set(seen["tooling"])
    tooling_modules = ("ats_hf.hub", "ats_hf.benchmark", "ats_hf.data", "ats_hf.visualize", "ats_hf.metrics")
    assert "ats_hf.modeling_ats_vit" in seen["own"] and not [m for m in seen["own"] if m.startswith(tooling_modules)]
    assert seen["lazy"] == "ats_hf.hub.checkpoint", "tooling stays reachable from the top level, on first use"


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    # tune searches the settings instead of taking them
    assert ("--first-layers" if command == "tune" else "--ats-layers") in capsys.readouterr().out


@pytest.mark.parametrize(
    "forms, layers",
    [(["3-5"], [3, 4, 5]), (["3", "4", "5"], [3, 4, 5]), (["1,3,4-5"], [1, 3, 4, 5]), (["none"], [])],
)
@pytest.mark.parametrize("command", ["benchmark", "visualize", "convert", "calibrate", "export"])
def test_every_command_takes_the_same_settings_grammar(command, forms, layers):
    positional = {"benchmark": [], "visualize": ["image.png"], "convert": ["source", "output"], "calibrate": [],
                  "export": ["output"]}[command]
    args = build_parser(command).parse_args([command, *positional, "--ats-layers", *forms, "--ats-max-tokens",
                                             "0.5"])
    assert (args.ats_layers, args.ats_max_tokens) == (layers, 0.5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-sizes", "-1"], "argument --batch-sizes: -1 is not allowed: it must be an integer >= 1"),
        (["--batch-sizes", "1", "0"], "argument --batch-sizes: 0 is not allowed"),
        (["--num-images", "-5"], "argument --num-images: -5 is not allowed"),
        (["--num-images", "0"], "argument --num-images: 0 is not allowed"),
        (["--timing-images", "0"], "argument --timing-images: 0"),
        (["--repeats", "0"], "argument --repeats: 0"),
        (["--threads", "0"], "argument --threads: 0"),
        (["--eval-batch-size", "0"], "argument --eval-batch-size: 0"),
        (["--num-images", "ten"], "'ten' is not an integer"),
        (["--sweep-from-layer", "-1"], "argument --sweep-from-layer: -1 is not allowed: it must be an integer >= 0"),
        (["--sweep", "0"], "'0' is not 'all', an int >= 1 or a fraction"),
        (["--ats-layers", "5-3"], "the range '5-3' is reversed; write '3-5'"),
        (["--ats-sampler", "top_k"], "unrecognized arguments: --ats-sampler"),  # the benchmark compares samplers
        (["--runtime", "tensorrt"], "argument --runtime: invalid choice: 'tensorrt'"),
        (["--mode", "fixed"], "argument --mode: invalid choice: 'fixed'"),
    ],
)
def test_benchmark_rejects_values_that_make_no_sense(argv, message, capsys):
    assert main(["benchmark", *argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("ats-hf benchmark: error: ") and message in error


def one_error_line(capsys) -> str:
    """The error line of a failed command: the last line on stderr, with no traceback before it."""
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error.strip().splitlines()[-1]


def test_benchmark_reports_missing_and_unusable_inputs_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "no-model")
    assert main(["benchmark", "--model", missing]) == 2
    assert one_error_line(capsys) == f"ats-hf benchmark: error: --model folder {missing!r} does not exist"
    assert main(["benchmark", "--model", "./no-model"]) == 2  # not "Repo id must use alphanumeric chars"
    assert one_error_line(capsys) == "ats-hf benchmark: error: --model folder './no-model' does not exist"
    assert main(["benchmark", "--model", "someone/not-in-the-cache"]) == 2  # offline in the tests
    assert one_error_line(capsys).startswith("ats-hf benchmark: error: cannot load --model 'someone/not-in-the-cache'")
    assert main(["benchmark", "--model", str(tmp_path)]) == 2  # a folder without a model
    assert one_error_line(capsys).startswith(f"ats-hf benchmark: error: cannot load --model {str(tmp_path)!r}")

    assert main(["benchmark", "--dataset", str(tmp_path / "no-images")]) == 2
    line = one_error_line(capsys)
    assert line.endswith(f"dataset folder {str(tmp_path / 'no-images')!r} does not exist")
    (tmp_path / "empty").mkdir()
    assert main(["benchmark", "--dataset", str(tmp_path / "empty"), "--batch-sizes"]) == 2
    assert "holds no images" in one_error_line(capsys)
    assert main(["benchmark", "--split", "test"]) == 2
    assert one_error_line(capsys).endswith("--split, --image-column and --label-column apply to --dataset only")
    assert main(["benchmark", "--ats-layers", "4-9"]) == 2  # the embedded model has layers 0..5
    assert "outside 0..5" in one_error_line(capsys)
    assert main(["benchmark", "--ats-layers", "none"]) == 2
    assert "nothing to compare with dense" in one_error_line(capsys)


def test_no_import_cycles_in_the_package():
    import ast
    import importlib.util

    import ats_hf

    root = Path(ats_hf.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (path, path.name == "__init__.py")

    def edges(name):
        path, is_package = modules[name]
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                    else node.module
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    yield target if target in modules else base
            elif isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)

    graph = {name: {t for t in edges(name) if t in modules and t != name} for name in modules}
    visiting, done = [], set()

    def visit(name):
        if name in visiting:
            raise AssertionError(f"import cycle: {' -> '.join([*visiting[visiting.index(name) :], name])}")
        if name not in done:
            visiting.append(name)
            for target in sorted(graph[name]):
                visit(target)
            visiting.pop()
            done.add(name)

    for name in sorted(graph):
        visit(name)
    assert "ats_hf.benchmark.report" in graph and "ats_hf.benchmark.engine" not in graph["ats_hf.benchmark.report"]


def test_benchmark_without_its_extra_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: (
        None if name == "matplotlib" else find_spec(name, *rest)
    ))
    assert main(["benchmark"]) == 2
    assert capsys.readouterr().err == (
        "ats-hf benchmark: error: ats-hf benchmark needs matplotlib, which is not installed: pip install "
        "'ats_hf[benchmark]'\n"
    )


def test_a_real_run_reports_a_mistake_in_exactly_one_line(tmp_path):
    script = Path(sys.executable).with_name("ats-hf")
    done = subprocess.run([str(script), "benchmark", "--dataset", str(tmp_path / "missing")], capture_output=True,
                          text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stdout == ""
    missing = str(tmp_path / "missing")
    assert done.stderr == f"ats-hf benchmark: error: --dataset folder {missing!r} does not exist\n"
