"""Supervised fine-tuning of any `from_pretrained` causal LM with TRL's SFTTrainer and Schedule-Free, full or LoRA.

    sf-hf sft --config recipes/llama-small/sft/config_sf_adamw_refined.yaml
    accelerate launch -m sf_hf.scripts.sft --config RECIPE.yaml --use_peft --lora_r 16    # the same module

TRL's trl/scripts/sft.py with `schedule_free_trainer(SFTTrainer)` and `schedule_free_config(SFTConfig)`: a recipe's
keys are fields of `TrlScriptArguments` (TRL's ScriptArguments), `SFTConfig` plus the Schedule-Free fields
(optimizer_name, decoupling_c, ...) and TRL's `ModelConfig` (model_name_or_path, use_peft, lora_r, ...). With no
--config the recipe is recipes/llama-small/sft/config_sf_adamw_refined.yaml (the embedded default model with LoRA on
`kjv-instructions`). Every evaluation, checkpoint and the saved model (an adapter: its weights) hold x; the held-out
loss is measured before and after. See docs/finetuning.md.
"""

from trl import SFTConfig, SFTTrainer

from ..bundled import RECIPES
from .trl_run import run_trl_script

DEFAULT_RECIPE = RECIPES / "llama-small" / "sft" / "config_sf_adamw_refined.yaml"


def main(argv=None, default_config=DEFAULT_RECIPE):
    """Runs an SFT recipe (`argv`, default `sys.argv[1:]`); returns the final evaluation's metrics, with
    `initial_eval_loss` measured before training."""
    return run_trl_script(SFTTrainer, SFTConfig, argv, default_config, report=("eval_loss", "eval_mean_token_accuracy"))


if __name__ == "__main__":
    main()
