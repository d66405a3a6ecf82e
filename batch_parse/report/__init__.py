"""`inspect`, `render` and `progress`: what an output holds, drawn or counted.

Kept free of imports: the CLI reads REVIEW_MIN_FACE for `render --help` without loading numpy.
"""

# `render` shows faces at least this big (shorter box side, px) and counts the smaller ones: at
# 10-20 px nobody can see, let alone correct, a lip's outline, and such faces score lowest, so they
# filled the first page. At 40 px a part window is about 10 px wide, the least a reviewer can paint
# in. `--min-face 0` shows every face.
REVIEW_MIN_FACE = 40.0
