"""Direct preference optimization of any `from_pretrained` causal LM with TRL's DPOTrainer and Schedule-Free.

    sf-hf dpo --config recipes/llama-small/dpo/config_sf_adamw_refined.yaml
    accelerate launch -m sf_hf.scripts.dpo --config RECIPE.yaml --beta 0.2    # the same module

TRL's trl/scripts/dpo.py with `schedule_free_trainer(DPOTrainer)` and `schedule_free_config(DPOConfig)` (see
`sf_hf.scripts.sft` for the recipe's keys). With no --config the recipe is
recipes/llama-small/dpo/config_sf_adamw_refined.yaml (the embedded default model with LoRA on `kjv-preferences`;
the reference model is the base with the adapter disabled). The policy's evaluations, checkpoints and saved model
hold x; the reference model never trains and is never switched. The held-out reward accuracy and margin are
measured before and after. See docs/finetuning.md.
"""

from trl import DPOConfig, DPOTrainer

from ..bundled import RECIPES
from .trl_run import run_trl_script

DEFAULT_RECIPE = RECIPES / "llama-small" / "dpo" / "config_sf_adamw_refined.yaml"
REPORT = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_logps/rejected")


def main(argv=None, default_config=DEFAULT_RECIPE):
    """Runs a DPO recipe (`argv`, default `sys.argv[1:]`); returns the final evaluation's metrics, with
    `initial_<metric>` for the loss, reward accuracy and margin measured before training."""
    return run_trl_script(DPOTrainer, DPOConfig, argv, default_config, report=REPORT)


if __name__ == "__main__":
    main()
