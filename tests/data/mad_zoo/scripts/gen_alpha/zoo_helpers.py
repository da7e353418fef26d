"""gen_alpha's own helper; gen_beta has a module of the same name with other content."""

SIZES = ["small", "large"]
