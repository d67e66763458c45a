"""`ilex.__all__`, what `import ilex` exports and docs/api.md's list of names say the same."""

import ast
import importlib
import os
import re
import types

import ilex

API = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "api.md")
INIT = os.path.join(os.path.dirname(ilex.__file__), "__init__.py")


def _api() -> str:
    with open(API, encoding="utf-8") as f:
        return f.read()


def _reexported() -> set[str]:
    """The names src/ilex/__init__.py binds on purpose: `from x import y as y` (the explicit re-export form),
    public assignments, and the keys of `_LAZY` (the names imported on first use)."""
    with open(INIT, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            names |= {a.asname for a in node.names if a.asname == a.name}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            if [t.id for t in node.targets if isinstance(t, ast.Name)] == ["_LAZY"]:
                names |= {k.value for k in node.value.keys}
    return {n for n in names if not n.startswith("_")}


def test_lazy_names_are_their_modules_objects_and_the_optimiser_imports_no_network_code():
    import subprocess
    import sys

    from ilex.bundle import load, save_bundle
    from ilex.convert import convert
    from ilex.models.synthmorph_deform import SynthMorphDeform
    from ilex.template import build_template

    assert (ilex.load, ilex.save_bundle, ilex.convert_weights) == (load, save_bundle, convert)
    assert (ilex.SynthMorphDeform, ilex.build_template) == (SynthMorphDeform, build_template)
    assert {"load", "synth", "train"} <= set(dir(ilex))
    # `ilex.train` stays the function after a module of the subpackage is imported (as when eager).
    code = "import ilex, ilex.train.settings; print(callable(ilex.train), ilex.train.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "ilex.train.run"], done.stdout
    # A fresh process: `import ilex` and -m optimize's modules leave the networks' code unimported.
    code = (
        "import sys, ilex; from ilex.registration.methods import OptimizeMethod; "
        "from ilex.registration.pipeline import register; import ilex.cli.register; "
        "print(sorted(m for m in ('equinox', 'scipy.linalg', 'ilex.bundle', 'ilex.template') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_all_is_what_init_exports():
    assert len(ilex.__all__) == len(set(ilex.__all__)), "a name is listed twice in ilex.__all__"
    assert set(ilex.__all__) == _reexported()
    for name in ilex.__all__:
        assert hasattr(ilex, name), name


def test_nothing_public_outside_all():
    # Subpackages become attributes when imported (ilex.batch, ilex.registration): they are reached by their path,
    # not listed. Anything else without an underscore is API and must be in __all__.
    public = {n for n in dir(ilex) if not n.startswith("_") and not isinstance(getattr(ilex, n), types.ModuleType)}
    assert public <= set(ilex.__all__), sorted(public - set(ilex.__all__))


def test_synthmorph_affine_is_exported():
    from ilex.models.synthmorph_affine import SynthMorphAffine

    assert ilex.SynthMorphAffine is SynthMorphAffine


def test_api_doc_lists_exactly_all():
    text = _api()
    section = text[text.index("## The names `import ilex` gives") :].split("\n## ", 1)[0]
    listed = {name for cell in re.findall(r"^\| ([^|]+) \|", section, flags=re.MULTILINE) for name in
              re.findall(r"`ilex\.(\w+)`", cell)}  # fmt: skip
    assert listed == set(ilex.__all__), (sorted(listed - set(ilex.__all__)), sorted(set(ilex.__all__) - listed))


def _resolve(dotted: str):
    """The object `dotted` (`ilex.a.b.C.d`) names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_ilex_name_in_api_doc_exists():
    """Every `ilex.x.y` docs/api.md names in code is there (a renamed or unexported name fails here)."""
    names = sorted({m for span in re.findall(r"`([^`]+)`", _api()) for m in re.findall(r"\bilex(?:\.\w+)+", span)})
    assert names
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"docs/api.md names what ilex does not have: {missing}"
