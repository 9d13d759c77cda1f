"""Training stages: `stmed dpo` (preference pairs) and `stmed sft` (stage 1, visual self-questioning)."""
