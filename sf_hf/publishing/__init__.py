"""Publishing a model folder at x: which weights a folder holds (`run_inventory`), what of it may leave the machine
(`run_inventory.PUBLISHED_PATTERNS` / `NEVER_PUBLISHED`, `public_records`), its model card (`card`), and the Hub calls
sf_hf makes itself, each retried by one policy (`hub`, `retry`).

    from sf_hf.publishing.card import trainer_model_card
    trainer_model_card("runs/llama-small", repo_id="org/llama-small-sf", run_dir="runs/llama-small").save("README.md")

It sits beside the trainer, below the pipeline: `sf_hf.trainer_hub` (the trainer's `push_to_hub`, its pushes during
training and `create_model_card`) and `sf_hf.pipeline` (`sf-hf push`, `sf-hf card`, `CheckpointPipelineCallback`)
both import it; it imports neither. See docs/pipeline.md (`sf-hf push`, and `ScheduleFreeTrainer`'s own pushes).
"""
