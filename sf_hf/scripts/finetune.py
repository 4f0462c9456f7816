"""Fine-tune any `from_pretrained` causal LM (a local folder or a Hub id) on a text dataset with Schedule-Free AdamW.

    accelerate launch recipes/finetune.py --model_name_or_path outputs/llama-small-sf_adamw_refined \
        --dataset_name my_notes.txt --output_dir outputs/llama-small-finetuned

With no --config the recipe is recipes/llama-small/finetune/config_sf_adamw_refined.yaml (the embedded default
model, fine-tuned on WikiText-2). This is `sf_hf.scripts.pretrain` with model_name_or_path required: the model's
own tokenizer and context are used, the validation loss is measured before and after, and the output folder
holds x.
"""

from ..bundled import RECIPES
from . import pretrain

DEFAULT_RECIPE = RECIPES / "llama-small" / "finetune" / "config_sf_adamw_refined.yaml"


def main(argv=None, default_config=DEFAULT_RECIPE):
    """`sf_hf.scripts.pretrain.main` with this script's default recipe and a pretrained model required."""
    return pretrain.main(argv, default_config=default_config, require_pretrained=True)


if __name__ == "__main__":
    main()
