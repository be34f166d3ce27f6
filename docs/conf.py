"""Sphinx configuration: the API pages come from the docstrings (napoleon reads
their Args sections, MathJax renders the algorithm boxes). CI builds with -W."""

project = "proxopt"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the Args sections carry the types
exclude_patterns = ["_build", "*.md"]
html_theme = "alabaster"
nitpicky = False
