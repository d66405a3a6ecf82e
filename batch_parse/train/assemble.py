"""One weights file from the best networks of a run's phases: a model to score before e2e is done.

A run's phases each keep their best weights (RUN/stage_<phase>.safetensors), and e2e starts from
stage 1, localiser and part networks taken from three of them. This writes that same model, the one
e2e starts from, as a shippable file, so it can be scored while e2e is still to come (or with
networks e2e would not take: the dense stage 1, another run's part networks):

    python -m batch_parse.train.assemble RUN OUT.safetensors --stage1 a-points --localiser b-points --stage2 c

Each network comes from the named phase's best weights, as train.initial_model takes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from batch_parse.model.weights import save_weights


def assemble(run: str | Path, out: str | Path, stage1: str, localiser: str, stage2: str, fp16: bool = True) -> Path:
    """Writes OUT from the three phases' best weights in RUN; returns OUT."""
    from batch_parse.train.train import TrainOptions, initial_model

    run, out = Path(run), Path(out)
    start = (("stage1", stage1), ("localiser", localiser), ("stage2", stage2))
    model = initial_model(TrainOptions("", str(run), "e2e", 0, start=start), run)
    info = {"assembled_from": str(run), **{network: phase for network, phase in start}}
    save_weights(model, out, dtype=torch.float16 if fp16 else torch.float32, info=info)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_parse.train.assemble", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a training run folder (RUN_DIR of batch-parse train, HOME/runs/<recipe>)")
    parser.add_argument("out", help="the weights file to write (fp16 safetensors)")
    parser.add_argument("--stage1", default="a", help="phase whose stage-1 iCNN is taken (default a)")
    parser.add_argument("--localiser", default="b", help="phase whose localiser is taken (default b)")
    parser.add_argument("--stage2", default="c", help="phase whose part iCNNs are taken (default c)")
    parser.add_argument("--fp32", action="store_true", help="write float32 (default fp16, as shipped)")
    args = parser.parse_args(argv)
    try:
        print(assemble(args.run, args.out, args.stage1, args.localiser, args.stage2, fp16=not args.fp32))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
