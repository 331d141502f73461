"""Every registered optimizer documents what DESIGN.md asks for and is exported flatly."""

from __future__ import annotations

import inspect

import pytest

import gradkit

INFOS = gradkit.optim.available()


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_docstring_has_paper_math_defaults_and_official_code_notes(info):
    doc = inspect.getdoc(info.cls) or ""
    module_doc = inspect.getmodule(info.cls).__doc__ or ""
    text = doc + module_doc
    assert info.paper and info.year > 1900 and info.url.startswith("http")
    assert ".. math::" in text, "the update as math"
    assert "efault" in doc, "the defaults"
    notes = ("official", "torch.optim", "deviat", "authors' code", "implementations differ")
    assert any(w in text.lower() for w in notes), (
        "where the official code (or torch) differs, and what we chose"
    )


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_exported_from_gradkit_optim_with_its_own_name(info):
    assert getattr(gradkit.optim, info.name) is info.cls
    assert info.name in gradkit.optim.__all__


def test_registry_covers_the_readme_methods_table():
    with open(inspect.getfile(gradkit).replace("src/gradkit/__init__.py", "README.md")) as f:
        readme = f.read()
    missing = [
        i.name
        for i in INFOS
        if f"gradkit.optim.{i.name}" not in readme and f"`{i.name}`" not in readme
    ]
    assert not missing, f"optimizers missing from the README methods table: {missing}"
