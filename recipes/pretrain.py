"""Pretrain (or fine-tune) a causal LM with Schedule-Free AdamW: `accelerate launch recipes/pretrain.py [--config
RECIPE.yaml] [--key value ...]`. The script is `sf_hf.scripts.pretrain` (its docstring and docs/recipes.md)."""

from sf_hf.scripts.pretrain import main

if __name__ == "__main__":
    main()
