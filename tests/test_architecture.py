"""The layering of docs/architecture.md, read from the source: what each layer may import, where family names may
appear, and how small the family files stay."""

import ast
import re
from pathlib import Path

import ats_hf
import ats_hf_cli
import ats_hf_common
from ats_hf import ats_sampling
from ats_hf.families import FAMILIES
from ats_hf_common import grammar

SOURCE = Path(ats_hf.__file__).parent
FAMILY_FILES = {f"{kind}_ats_{name}.py" for kind in ("configuration", "modeling") for name in ("vit", "deit", "dinov2",
                                                                                                 "clip", "vivit")}
MODEL_FILES = FAMILY_FILES | {"configuration_ats_core.py", "modeling_ats_core.py", "ats_sampling.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports as written (e.g. '.modeling_ats_vit')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_algorithm_imports_torch_and_the_standard_library_only():
    imported = {name.split(".")[0] for name in imported_modules(Path(ats_sampling.__file__))}
    assert imported <= {"functools", "collections", "dataclasses", "typing", "torch"}, imported


def test_the_files_saved_for_remote_code_import_only_each_other_torch_and_transformers():
    for name in MODEL_FILES:
        for module in imported_modules(SOURCE / name):
            top = module.split(".")[0]
            assert module.startswith(".") or top in {"torch", "transformers", "huggingface_hub", "math", "functools",
                                                     "collections", "dataclasses", "typing", "contextlib"}, (name,
                                                                                                             module)
            if module.startswith("."):
                assert f"{module.lstrip('.')}.py" in MODEL_FILES, (name, module)


def test_no_tool_imports_a_family_module():
    family_modules = {name.removesuffix(".py") for name in FAMILY_FILES}
    allowed = MODEL_FILES | {"families.py", "__init__.py"}
    for path in SOURCE.rglob("*.py"):
        if path.parent == SOURCE and path.name in allowed:
            continue
        for module in imported_modules(path):
            assert module.rsplit(".", 1)[-1] not in family_modules, (path, module)


def test_family_class_names_appear_only_in_their_files_the_registry_and_the_package():
    other_families = re.compile(r"\bAts(DeiT|Dinov2|CLIP|Vivit)\w*")
    for path in [*SOURCE.rglob("*.py"), *Path(ats_hf_cli.__file__).parent.rglob("*.py"),
                 *Path(ats_hf_common.__file__).parent.rglob("*.py")]:
        if path.parent == SOURCE and path.name in FAMILY_FILES | {"families.py", "__init__.py"}:
            continue
        assert not other_families.search(path.read_text()), path


def test_the_plain_python_packages_load_without_torch_and_the_tools_never_import_the_command_line():
    for package in (ats_hf_cli, ats_hf_common):
        for path in Path(package.__file__).parent.rglob("*.py"):
            for node in ast.parse(path.read_text()).body:  # module level: what importing the file loads
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                    assert not any(str(name).split(".")[0] in {"torch", "transformers", "ats_hf"} for name in names), (
                        path, names)
    for path in SOURCE.rglob("*.py"):
        if path.name != "__main__.py":  # `python -m ats_hf`: the command line's entry point, the top of the house
            assert not any(module.startswith("ats_hf_cli") for module in imported_modules(path)), path


def test_the_family_modeling_files_stay_small():
    lines = sum(len((SOURCE / f"modeling_ats_{name}.py").read_text().splitlines())
                for name in ("vit", "deit", "dinov2", "clip"))
    assert lines <= 600, f"the four family modeling files have {lines} lines; move what they share into the core"


def test_the_command_line_knows_the_samplers_the_algorithm_has():
    assert grammar.ATS_SAMPLERS == ats_sampling.ATS_SAMPLERS == tuple(ats_sampling.TOKEN_SAMPLERS)


def test_every_family_is_registered_with_its_classes():
    for family in FAMILIES:
        assert family.base_model in family.models and family.config_class.model_type in family.model_types
        for model_class in family.models:
            assert model_class.config_class is family.config_class
            assert model_class._ats_auto_map["AutoConfig"].endswith(family.config_class.__name__)
