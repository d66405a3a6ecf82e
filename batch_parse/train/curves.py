"""Validation curves of a training run drawn as one PNG: each stage's metric against samples seen.

A reference model (stn-icnn/v2 by default) is scored on the same validation faces with the same
metric and drawn as a dashed line, so "still rising" and "past the old model" can be read off
the plot. v2's own training curves were not kept; its final score is what can be compared.

Usage: python -m batch_parse.train.curves RUN_DIR OUT.png [--pool POOL] [--reference stn-icnn/v2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGE_TITLES = {"a": "stage-1 iCNN", "b": "localiser", "c": "part iCNNs", "e2e": "end to end"}  # a plot is titled "PHASE: title"


def read_curves(run: Path) -> dict[str, dict]:
    """phase -> its curve file, in training order: by stage, a stage's phases by name (a, a-points, b ...)."""
    curves = {path.stem.removeprefix("curve_"): json.loads(path.read_text()) for path in run.glob("curve_*.json")}
    order = list(STAGE_TITLES)
    return dict(sorted(curves.items(), key=lambda kv: (order.index(kv[1]["stage"]), kv[0])))


def reference_scores(reference: str, pool: Path, stages: list[str], val_images: int = 200) -> dict[str, dict[str, float]]:
    """The reference weights' metrics per stage on the pool's validation faces (as train.py scores them)."""
    from batch_parse.model.registry import REGISTRY
    from batch_parse.model.weights import load_weights
    from batch_parse.train.train import TrainOptions, validation_score, validation_split

    model, _ = load_weights(REGISTRY.get(reference, reference))
    images, labels = validation_split(TrainOptions(str(pool), "", "a", 1, val_images=val_images), pool)
    return {stage: validation_score(model, stage, images, labels)[2] for stage in stages}


def plot_curves(run: str | Path, out: str | Path, pool: str | Path | None = None, reference: str | None = "stn-icnn/v2",
                label: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    run, out = Path(run), Path(out)
    curves = read_curves(run)
    if not curves:
        raise ValueError(f"{run} has no curve_<stage>.json: nothing to plot")
    pool = Path(pool) if pool else run.parent.parent / "pool"
    stages = sorted({data["stage"] for data in curves.values()}, key=list(STAGE_TITLES).index)
    refs = reference_scores(reference, pool, stages) if reference and (pool / "pool.json").is_file() else {}
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (phase, data) in zip(axes[0], curves.items()):
        stage = data["stage"]
        points = data["curve"]
        for i, metric in enumerate(points[-1].get("metrics", {})):
            xs = [p["samples"] for p in points if metric in p.get("metrics", {})]
            ys = [p["metrics"][metric] for p in points if metric in p.get("metrics", {})]
            colour = f"C{i}"
            ax.plot(xs, ys, "-o", ms=3, color=colour, label=f"{label or run.name} {metric}")
            if metric in refs.get(stage, {}):
                ax.axhline(refs[stage][metric], ls="--", color=colour, lw=1, label=f"{reference} {metric}")
        ax.set_title(f"{phase}: {STAGE_TITLES[stage]}")
        ax.set_xlabel("training samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_parse.train.curves", description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument("--pool", default=None, help="pool whose val faces score the reference (default RUN/../../pool)")
    parser.add_argument("--reference", default="stn-icnn/v2", help="weights drawn as dashed lines ('' for none)")
    args = parser.parse_args(argv)
    try:
        print(plot_curves(args.run, args.out, args.pool, args.reference or None))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
