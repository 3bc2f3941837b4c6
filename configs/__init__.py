"""The configs that ship with raydiff (this folder is the package ``raydiff.configs``: its YAML
files are package data, found with ``importlib.resources`` in a checkout and in an install)."""
