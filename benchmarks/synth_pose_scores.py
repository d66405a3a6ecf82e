"""How models label synthetic turned faces: F1 against synth_pose's exact labels, per yaw.

    python benchmarks/synth_pose_scores.py                                  # v2 and v3, CFP test persons
    python benchmarks/synth_pose_scores.py --models stn-icnn/v2,runs/x.safetensors --split val --faces 20

Each person's first frontal CFP photo (the face pool's own hash split of persons, so `test` is
the people no shipped model trained on) is framed and meshed as the face pool build does it,
turned by batch_parse.train.synth_pose to each yaw both ways (-yaw and +yaw pooled), and parsed
whole by each model (the turned face is already in an inference frame). F1 is the Helen-convention
score of batch_parse.train.evaluate against the turned labels (the teacher's on the frontal face,
carried by the render), so yaw 0 is F1 against the teacher on the re-framed frontal face.

Why: a model's drop from yaw 0 to 80 here, set beside its drop on real profiles (human labels,
model card; hand-placed points, benchmarks/cfp_probes.py), says how hard the synthetic profiles are
compared with real ones; and it scores a model trained on them on the held-out persons' profiles.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from batch_parse.model.parser import load_parser  # noqa: E402
from batch_parse.train.datasets import SPLITS  # noqa: E402
from batch_parse.train.evaluate import confusion, f1_scores  # noqa: E402
from batch_parse.train.synth_pose import turn_face  # noqa: E402
from meshed_faces import cfp_frontal_photos, meshed_faces  # noqa: E402

YAWS = (0, 30, 60, 80)
GROUPS = ("overall", "brows", "eyes", "nose", "mouth", "skin")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="stn-icnn/v2,stn-icnn/v3", help="comma-separated registry names or paths")
    p.add_argument("--split", default="test", choices=SPLITS, help="which CFP persons (default test)")
    p.add_argument("--faces", type=int, default=40, help="at most this many persons")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.faces < 1 or args.threads < 1:
        raise SystemExit("error: --faces and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    try:
        parsers = [load_parser(name, device="cpu", precision="fp32") for name in args.models.split(",")]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"error: cannot load --models {args.models!r}: {exc}") from None
    faces = meshed_faces(cfp_frontal_photos(args.faces, split=args.split))
    if not faces:
        raise SystemExit(f"error: no CFP {args.split} person's frontal face could be meshed")
    print(f"CFP {args.split} persons: {len(faces)} frontal faces, each turned to yaw +-{'/'.join(map(str, YAWS[1:]))}; "
          f"load average {os.getloadavg()[0]:.1f}")
    turned = {yaw: [turn_face(f.image, f.mesh, f.labels, s * yaw) for f in faces for s in ((1,) if yaw == 0 else (1, -1))]
              for yaw in YAWS}
    print(f"F1 x100 vs synthetic labels ({'model':<28} {'yaw':>3} " + "".join(f"{g:>9}" for g in GROUPS) + ")")
    for parser in parsers:
        for yaw in YAWS:
            hist = sum(confusion(r.label_map, t.labels) for r, t in zip(parser.parse([t.image for t in turned[yaw]]), turned[yaw]))
            scores = f1_scores(hist)
            # A model without the skin class has no skin score (its skin is background).
            cells = "".join(f"{100 * scores[g]:>9.1f}" if g != "skin" or "skin" in parser.class_names else f"{'-':>9}"
                            for g in GROUPS)
            print(f"  {parser.model_name:<46} {yaw:>3} {cells}")


if __name__ == "__main__":
    main()
