"""Fine-tune any `from_pretrained` causal LM (a local folder or a Hub id) on a text dataset with Schedule-Free AdamW.

    accelerate launch recipes/finetune.py --model_name_or_path outputs/llama-small-sf_adamw_refined \
        --dataset_name my_notes.txt --output_dir outputs/llama-small-finetuned

With no --config the recipe is recipes/llama-small/finetune/config_sf_adamw_refined.yaml (the embedded default
model, fine-tuned on WikiText-2). This is recipes/pretrain.py with model_name_or_path required: the model's own
tokenizer and context are used, the validation loss is measured before and after, and the output folder holds x.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretrain import main  # noqa: E402

DEFAULT_RECIPE = Path(__file__).resolve().parent / "llama-small" / "finetune" / "config_sf_adamw_refined.yaml"

if __name__ == "__main__":
    main(default_config=DEFAULT_RECIPE, require_pretrained=True)
