"""Quiet by default: a resumed tied-embedding model warns of no missing key (and is still tied, with the saved
weights), transformers' save bars are hidden by the scripts' logging setup unless `--log_level info` asks, and
lm-eval's long documents raise no tokenizer warning.

    pytest tests/test_quiet.py -q
"""

import logging

import pytest
import torch
import transformers
from safetensors.torch import load_file

from sf_hf import ScheduleFreeTrainer
from sf_hf.configs import ScheduleFreeConfig
from sf_hf.data import train_bpe_tokenizer
from sf_hf.pipeline.harness import _quiet_logs
from sf_hf.scripts.reporting import setup_logging

from .trainer_utils import TokenDataset, config, tiny_hub_model, tiny_model


def tied_llama():
    model = tiny_model()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    return model


@pytest.mark.parametrize("make, dtype", [(tied_llama, torch.float32), (lambda: tiny_hub_model("gpt2"), torch.bfloat16)])
def test_resuming_a_tied_embedding_model_warns_of_no_missing_key_and_keeps_it_tied(tmp_path, caplog, make, dtype):
    args = dict(max_steps=4, save_strategy="steps", save_steps=2)
    ScheduleFreeTrainer(model=make().to(dtype), args=config(tmp_path, **args), train_dataset=TokenDataset(32)).train()
    saved = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert not any(name.endswith("lm_head.weight") for name in saved)  # saved once, under the embedding's name
    model = make().to(dtype)
    loaded = {}

    class Recorder(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            loaded.update({k: v.clone() for k, v in model.state_dict().items()})

    trainer = ScheduleFreeTrainer(
        model=model, args=config(tmp_path, **args), train_dataset=TokenDataset(32), callbacks=[Recorder()]
    )
    with caplog.at_level(logging.WARNING):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert "missing keys" not in caplog.text
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    embedding = next(name for name in saved if "wte" in name or "embed_tokens" in name)
    assert torch.equal(loaded[embedding], saved[embedding])  # x as saved (y is derived from it)
    assert torch.equal(loaded[next(k for k in loaded if k.endswith("lm_head.weight"))], saved[embedding])


def test_save_bars_are_hidden_unless_log_level_info_asks(tmp_path, capsys):
    model = tiny_model()
    try:
        for log_level, shown in (("passive", False), ("info", True)):
            setup_logging(ScheduleFreeConfig(output_dir=str(tmp_path), log_level=log_level, report_to="none"))
            capsys.readouterr()
            model.save_pretrained(tmp_path / log_level)
            assert ("Writing model shards" in capsys.readouterr().err) == shown
            assert (tmp_path / log_level / "model.safetensors").is_file()
    finally:
        transformers.utils.logging.set_tqdm_hook(None)
        transformers.utils.logging.set_verbosity_warning()


def test_long_documents_for_lm_eval_raise_no_tokenizer_warning_unless_verbose(capfd, caplog):
    texts = ["in the beginning god created the heaven and the earth"] * 20
    for verbose in (False, True):
        tokenizer = train_bpe_tokenizer(texts, 300, model_max_length=8)
        tokenizer.deprecation_warnings.clear()  # it warns once (per instance; per class before transformers 5.25)
        capfd.readouterr()
        caplog.clear()
        with _quiet_logs(verbose):
            ids = tokenizer(" ".join(texts))["input_ids"]  # as lm-eval's HFLM.tok_encode: the whole document
        assert len(ids) > 8
        shown = capfd.readouterr().err + caplog.text  # transformers' own handler, or propagated (older releases)
        assert ("Token indices sequence length is longer" in shown) == verbose
