"""Supervised fine-tuning with TRL's SFTTrainer and Schedule-Free AdamW: `accelerate launch recipes/sft.py [--config
RECIPE.yaml] [--key value ...]`. The script is `sf_hf.scripts.sft`."""

from sf_hf.scripts.sft import main

if __name__ == "__main__":
    main()
