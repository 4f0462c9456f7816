"""DPO with TRL's DPOTrainer and Schedule-Free AdamW: `accelerate launch recipes/dpo.py [--config RECIPE.yaml]
[--key value ...]`. The script is `sf_hf.scripts.dpo`."""

from sf_hf.scripts.dpo import main

if __name__ == "__main__":
    main()
