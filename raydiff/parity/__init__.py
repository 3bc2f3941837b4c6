"""``raydiff parity``: raydiff's maps against the authors' own code, stage by stage.

For each covered method a check module here feeds the SAME model (raydiff's trained network,
wrapped in the reference's model interface), the SAME images and the SAME noise (raydiff's
draws patched into the reference's noise calls, or the method's deterministic path) to raydiff
and to the reference implementation, imported from a checkout the user names
(``--reference ddad=/path/to/DDAD``; :mod:`raydiff.parity.refs`: nothing is vendored,
downloaded or copied). Every intermediate both compute is a :class:`~raydiff.parity.compare.Stage`;
:mod:`raydiff.parity.compare` measures how far apart they are.

A check module defines:

- ``REFERENCE``: the ``--reference`` key it needs (``ddad``, ``dynad``, ``ran``, ``anoddpm``);
- ``MODULES``: the reference modules it imports, ``ABSENT``: third-party packages it may stub
  when they are not installed (never one on the compared path);
- ``stages(ref, inputs) -> list[Stage]``.

The checks are listed in :data:`raydiff.parity.run.CHECKS`; docs/parity.md has the table, the
reference commits and how to rerun it.
"""
