"""The training scripts behind `recipes/*.py` and `sf-hf pretrain|finetune`, one module per command.

    accelerate launch recipes/pretrain.py --config RECIPE.yaml       # recipes/pretrain.py runs sf_hf.scripts.pretrain
    accelerate launch -m sf_hf.scripts.pretrain --config RECIPE.yaml  # the same, without the repository's recipes/
    sf-hf pretrain --config RECIPE.yaml                                # the same, through sf_hf.cli

`SCRIPTS` maps each `sf-hf` training command to the module that runs it (a module with a `main()`); a new
command is one more entry here.

Modules: `pretrain` (the whole run: parse, check, data, model, train, report), `finetune` (pretrain with a model
required), `checks` (input checks that fail within seconds), `data` (tokenizer and packed blocks of a recipe),
`reporting` (logging, the derived numbers and the final summary); `sft` and `dpo` (TRL's SFTTrainer / DPOTrainer with
the Schedule-Free mixin, `trl_run` the layout they share).
"""

SCRIPTS = {
    "pretrain": "sf_hf.scripts.pretrain",
    "finetune": "sf_hf.scripts.finetune",
    "sft": "sf_hf.scripts.sft",
    "dpo": "sf_hf.scripts.dpo",
}
