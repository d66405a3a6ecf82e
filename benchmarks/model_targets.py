"""Does a candidate model meet its issue's targets, and is it at least the default everywhere?

Reads what the scoring commands wrote, runs nothing itself:

    batch-parse eval FACEPOOL --split test --model stn-icnn/v2 --json eval-v2.json
    batch-parse eval FACEPOOL --split test --model CANDIDATE --json eval-cand.json
    python benchmarks/cfp_probes.py --models stn-icnn/v2,CANDIDATE --no-swaps --json cfp.json
    python benchmarks/model_targets.py eval-v2.json eval-cand.json cfp.json

Targets (issue 24): CFP probe hits on profiles >= 66 and frontal >= 79 (cfp_probes, the face
pool's CFP test persons); turned probe hits >= 72 (eval); F1 against clean teacher labels on
frontal faces not below the baseline's; skin F1 >= 93 on frontal faces and >= 88 on profiles.
"At least the baseline everywhere": every pose's probe hits and overall F1 in eval, and every
pose's CFP probe hits, at or above the baseline's (ties count as at least). Prints one table
and the verdict; exits 0 either way (a benchmark reports, it does not fail).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

POSES = ("frontal", "turned", "profile", "all")
CFP_POSES = ("frontal", "profile")


def eval_scores(path: Path) -> dict[str, float]:
    """Percent figures of one `batch-parse eval --json` file, keyed 'probes/<pose>', 'f1/<pose>', 'skin/<pose>'."""
    data = json.loads(path.read_text())
    out = {}
    for pose in POSES:
        out[f"probes/{pose}"] = 100 * data["probe_hits"][f"model/{pose}/all"]["rate"]
        f1 = data["f1_vs_teacher"][f"all/{pose}"]
        out[f"f1/{pose}"] = 100 * f1["overall"]
        out[f"skin/{pose}"] = 100 * f1.get("skin", 0.0)
    return out


def cfp_scores(path: Path, model: str) -> dict[str, float]:
    rates = json.loads(path.read_text())["probe_hits"]
    found = {key.rsplit("/", 2)[0] for key in rates}
    if model not in found:
        raise SystemExit(f"error: {path} has no model {model!r} (it has {', '.join(sorted(found))})")
    return {f"cfp/{pose}": 100 * rates[f"{model}/{pose}/all"]["rate"] for pose in CFP_POSES}


def targets(baseline: dict[str, float]) -> dict[str, float]:
    return {"cfp/profile": 66.0, "cfp/frontal": 79.0, "probes/turned": 72.0, "f1/frontal": baseline["f1/frontal"],
            "skin/frontal": 93.0, "skin/profile": 88.0}


def verdict(baseline: dict[str, float], candidate: dict[str, float]) -> tuple[list[str], list[str]]:
    """(targets missed, places the candidate is below the baseline), as 'key: value < bar' lines."""
    missed = [f"{k}: {candidate[k]:.2f} < {bar:.2f}" for k, bar in targets(baseline).items() if candidate[k] < bar]
    compared = [k for k in baseline if not k.startswith("skin/")]  # the 9-class baseline has no skin to compare
    below = [f"{k}: {candidate[k]:.2f} < {baseline[k]:.2f}" for k in compared if candidate[k] < baseline[k]]
    return missed, below


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("baseline_eval", type=Path)
    p.add_argument("candidate_eval", type=Path)
    p.add_argument("cfp", type=Path, help="cfp_probes.py --json output holding both models")
    p.add_argument("--baseline", default="stn-icnn/v2", help="the baseline's name in the cfp file")
    p.add_argument("--candidate", default=None, help="the candidate's name in the cfp file (default: its eval file's model)")
    args = p.parse_args(argv)
    cand_name = args.candidate or json.loads(args.candidate_eval.read_text())["model"].split("@")[0]
    base = eval_scores(args.baseline_eval) | cfp_scores(args.cfp, args.baseline)
    cand = eval_scores(args.candidate_eval) | cfp_scores(args.cfp, cand_name)
    bars = targets(base)
    print(f"{'figure (%)':<16}{args.baseline:>14}{cand_name:>22}{'target':>10}")
    for key in sorted(base):
        bar = f">= {bars[key]:.1f}" if key in bars else ""
        print(f"{key:<16}{base[key]:>14.2f}{cand[key]:>22.2f}{bar:>10}")
    missed, below = verdict(base, cand)
    print("targets: " + ("all met" if not missed else "missed: " + "; ".join(missed)))
    print(f"at least {args.baseline} everywhere: " + ("yes" if not below else "no: " + "; ".join(below)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
