"""``raydiff bench``: one click group for every benchmark; each subcommand hands its options to
the benchmark's own parser (``raydiff bench SUB --help`` shows them), so the same benchmark also
runs as ``python -m raydiff.bench.SUB`` where click is not installed."""

from __future__ import annotations

import importlib

import click

#: subcommand → (module, what it measures). engine/naive/train/metrics are the suite's parts
#: (``raydiff bench engine naive ...`` runs several in one process, as before).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "all": ("raydiff.bench.suite", "engine, naive, train and metrics in one run (the suite's options)"),
    "engine": ("raydiff.bench.suite", "the all-variants shared scoring pass on random images"),
    "naive": ("raydiff.bench.suite", "every variant alone, fp32, batch 1 (the reference scripts' way)"),
    "train": ("raydiff.bench.suite", "training images/s and MFU of a preset"),
    "metrics": ("raydiff.bench.suite", "exact metrics vs sklearn + a numpy AUPRO"),
    "noise": ("raydiff.bench.noise", "gaussian / simplex / GMM noise per map, vs opensimplex"),
    "schedule": ("raydiff.bench.schedule", "the sweep's orchestration on simulated GPU nodes vs its lower bound"),
}
#: Options (even --help) go to the benchmark's own parser.
PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": []}


@click.group("bench", invoke_without_command=True)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Performance benchmarks (BENCHMARKS.md); alone, the suite at CPU sizes (= bench all).

    \b
    Examples:
      raydiff bench all --json bench.json
      raydiff bench engine naive --device cuda --size 256 --preset ddad --batch 64
      raydiff bench metrics --rows 1e8 --metrics-one-group
      raydiff bench noise --check
      raydiff bench schedule --config configs/mvtec.yaml --gpus 4 8
    """
    if ctx.invoked_subcommand is None:
        from raydiff.bench.suite import main  # lazy: raydiff.cli imports this module at start-up

        main([])


def _forward(name: str, module: str, help_text: str) -> click.Command:
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        # The suite takes its parts as positional names (engine naive ...); "all" = its default set.
        argv = list(args) if module != "raydiff.bench.suite" or name == "all" else [name, *args]
        importlib.import_module(module).main(argv)

    return click.command(name, help=f"{help_text[0].upper()}{help_text[1:]}.", context_settings=PASS_THROUGH)(command)


for _name, (_module, _help) in SUBCOMMANDS.items():
    bench.add_command(_forward(_name, _module, _help))
