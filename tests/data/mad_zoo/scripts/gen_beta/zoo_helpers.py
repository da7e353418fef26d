"""gen_beta's helper: same module name as gen_alpha's, different content."""

FLAVOURS = ["fast"]
