"""Fine-tune any `from_pretrained` causal LM with Schedule-Free AdamW: `accelerate launch recipes/finetune.py
--model_name_or_path MODEL [--config RECIPE.yaml] [--key value ...]`. The script is `sf_hf.scripts.finetune`."""

from sf_hf.scripts.finetune import main

if __name__ == "__main__":
    main()
