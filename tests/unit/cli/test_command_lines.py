"""Every command line a page shows parses with the real `prunescope` parser and reads back as it was built."""

from __future__ import annotations

import shlex

import pytest

from pruning_core.cli.main import build_parser
from pruning_core.command_lines import command_line, continual_command, structured_command

PROTOCOL = {"calib": "wiki", "nsamples": 16, "seqlen": 256, "eval_windows": 8, "seed": 3, "dtype": "float32"}


def parse(line: str):
    words = shlex.split(line)
    assert words[0] == "prunescope"
    return build_parser().parse_args(words[1:])


def test_options_are_spelled_as_the_parser_spells_them():
    line = command_line("structured", model="my model/dir", layer_share=0.3, ratios=0.2, compensate=False,
                        speed=None, units=["heads", "layers"], out="x")
    assert "--layer-share 0.3" in line and "--no-compensate" in line and "--speed" not in line
    args = parse(line)
    assert (args.model, args.layer_share, args.ratios, args.compensate, args.speed, args.units) == \
        ("my model/dir", 0.3, "0.2", False, False, "heads,layers")


@pytest.mark.parametrize("units,allocation,speed", [(["heads", "channels"], "uniform", False),
                                                    (["heads", "layers"], "sensitivity", True)])
def test_structured_command_round_trips(units, allocation, speed):
    spec = {"model": "tiny-llama", "protocol": PROTOCOL, "eval_corpora": ["wiki", "news"], "units": units,
            "score": "obs", "compensate": True, "layer_share": 0.4, "allocation": allocation,
            "sensitivity_method": "sparsegpt", "speed": speed}
    line = structured_command(spec, 0.25)
    assert line.startswith("prunescope structured --model tiny-llama")
    args = parse(line)
    assert (args.model, args.calib, args.nsamples, args.seqlen, args.eval_windows, args.seed) == \
        ("tiny-llama", "wiki", 16, 256, 8, 3)
    assert (args.eval, args.units, args.ratios, args.score, args.compensate) == \
        ("wiki,news", ",".join(units), "0.25", "obs", True)
    assert (args.allocation, args.speed, args.save_model, args.report, args.out) == \
        (allocation, speed, True, True, "structured-export")
    assert args.layer_share == (0.4 if "layers" in units else 0.5)
    assert args.sensitivity_method == ("sparsegpt" if allocation == "sensitivity" else "wanda")


@pytest.mark.parametrize("adapters", [False, True])
def test_continual_command_round_trips(adapters):
    spec = {"model": "tiny-llama", "protocol": PROTOCOL, "domains": ["news", "pydocs"], "method": "wanda",
            "sparsity": 0.5, "strategies": ["naive", "copal"], "structure": "2:4", "allocation": "owl"}
    line = continual_command(spec, adapters=adapters)
    assert line.startswith("prunescope continual --model tiny-llama --domains news,pydocs")
    args = parse(line)
    assert (args.domains, args.method, args.sparsity, args.strategies, args.structure, args.allocation) == \
        ("news,pydocs", "wanda", 0.5, "naive,copal", "2:4", "owl")
    assert (args.nsamples, args.seqlen, args.eval_windows, args.seed) == (16, 256, 8, 3)
    assert (args.adapters, args.report, args.out) == \
        ((True, False, "continual-adapters") if adapters else (False, True, "continual-export"))
