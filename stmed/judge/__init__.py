"""The expert judge: pairs of sampled answers in, preference pairs out (DESIGN.md section 5)."""
