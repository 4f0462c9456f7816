"""Resuming models beyond the tiny Llama: a LoRA adapter (PEFT), GPT-NeoX (whose weights transformers 5 saves under
other names) and a model whose buffer grows in training (transformers' own `test_resume_batch_order` model). Each
resumed run must equal the uninterrupted one bitwise (one CPU process), and the check before resuming must not
refuse what transformers loads.

    pytest tests/reliability/test_resume_models.py -q
"""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from sf_hf import ScheduleFreeTrainer
from sf_hf.checkpoints import CheckpointCorruptError, verify_checkpoint

from ..trainer_utils import VOCAB, RecordY, TokenDataset, config, tiny_hub_model, tiny_model

TRAIN = TokenDataset(64, seed=1)
STEPS, SAVE_AT = 6, 3


def trained(trainer) -> dict:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def losses(trainer) -> list:
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


def run_and_resume(make_model, tmp_path, callbacks=()):
    """An uninterrupted run of STEPS steps (checkpoint at SAVE_AT) and a run resumed from that checkpoint."""
    args = dict(max_steps=STEPS, save_strategy="steps", save_steps=SAVE_AT, sf_fused=False)
    straight = ScheduleFreeTrainer(
        model=make_model(), args=config(tmp_path / "straight", **args), train_dataset=TRAIN, callbacks=list(callbacks)
    )
    straight.train()
    checkpoint = tmp_path / "straight" / f"checkpoint-{SAVE_AT}"
    resumed = ScheduleFreeTrainer(model=make_model(), args=config(tmp_path / "resumed", **args), train_dataset=TRAIN)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    return straight, resumed, checkpoint


def assert_bitwise_equal(straight, resumed):
    a, b = trained(straight), trained(resumed)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    after = [s for s in losses(straight) if s[0] > SAVE_AT]
    assert len(after) == STEPS - SAVE_AT and after == [s for s in losses(resumed) if s[0] > SAVE_AT]


def lora_model(r=4, target_modules=("q_proj", "v_proj")):
    peft = pytest.importorskip("peft")  # in the dev extra
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

    return get_peft_model(
        tiny_model(), LoraConfig(r=r, lora_alpha=8, target_modules=list(target_modules), lora_dropout=0.0)
    )


def gpt2_bf16_lora_model():
    """GPT-2 (Conv1D layers, fan_in_fan_out) in bfloat16, its adapters in bfloat16 too (PEFT casts them to float32
    unless told not to)."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0)
    return peft.get_peft_model(tiny_hub_model("gpt2").to(torch.bfloat16), config, autocast_adapter_dtype=False)


class AdaptersAtSave(RecordY):
    """Also records the LoRA weights the model holds when the checkpoint of SAVE_AT is written (x)."""

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.global_step == SAVE_AT:
            self.at_save = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("make_model", [lora_model, gpt2_bf16_lora_model], ids=["llama", "gpt2-bf16"])
def test_a_lora_run_resumes_from_its_own_checkpoint_bitwise(tmp_path, make_model):
    record = AdaptersAtSave(steps=[SAVE_AT])
    straight, resumed, checkpoint = run_and_resume(make_model, tmp_path, callbacks=[record])
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    assert verify_checkpoint(checkpoint, deep=False, model=make_model()) == checkpoint  # judged, and found to fit
    assert_bitwise_equal(straight, resumed)
    dtype = torch.bfloat16 if make_model is gpt2_bf16_lora_model else torch.float32
    assert {p.dtype for p in trained(resumed).values()} == {dtype}
    # the adapters were saved at x: the weights the model evaluates with, not y, the ones it trained with
    saved = load_file(checkpoint / "adapter_model.safetensors")
    at_save = {n.replace(".default", ""): t for n, t in record.at_save.items()}
    assert saved.keys() == at_save.keys()
    assert all(torch.equal(saved[k], at_save[k]) for k in saved)
    y = {n.replace(".default", ""): t for n, t in record.y[SAVE_AT].items() if "lora_" in n}
    assert max((saved[k] - y[k]).abs().max().item() for k in saved) > 1e-4


def test_an_adapter_of_another_rank_or_other_modules_is_refused_before_loading(tmp_path):
    """PEFT's resume loads into the model's own adapter: tensors the file lacks would silently stay at their
    initialization (other target modules), another rank would stop the load half-way. Both are refused, naming
    the tensors and the adapter_config.json fields that differ."""
    lora_model().save_pretrained(tmp_path)
    verify_checkpoint(tmp_path, deep=False, model=lora_model())
    with pytest.raises(
        CheckpointCorruptError,
        match=r"(?s)Can't find a valid checkpoint at .*adapter_model.safetensors: "
        r"no weights for 4 of the adapter's 12 tensors, e\.g\. \['base_model\.model\.model\.layers\.0"
        r"\.self_attn\.k_proj\.lora_A\.weight'.*adapter config mismatch: target_modules=",
    ):
        verify_checkpoint(tmp_path, deep=False, model=lora_model(target_modules=("q_proj", "k_proj", "v_proj")))
    with pytest.raises(
        CheckpointCorruptError,
        match=r"(?s)tensor 'base_model\.model\.model\.layers\.0\.self_attn"
        r"\.q_proj\.lora_A\.weight' has shape \[4, 32\], the model's adapter has \[8, 32\].*"
        r"\.\.\. and 5 more tensors of other shapes.*adapter config mismatch: r=4 \(model: 8\)",
    ):
        verify_checkpoint(tmp_path, deep=False, model=lora_model(r=8))
    with pytest.raises(
        CheckpointCorruptError,
        match=r"adapter_model.safetensors: a PEFT adapter without the model's "
        r"weights, but the model is no PEFT model",
    ):
        verify_checkpoint(tmp_path, deep=False, model=tiny_model())


def tiny_neox():
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            tie_word_embeddings=False,
        )
    )


def test_gpt_neox_resumes_bitwise_although_its_head_is_saved_as_embed_out(tmp_path):
    straight, resumed, checkpoint = run_and_resume(tiny_neox, tmp_path)
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as f:
        head = {"embed_out.weight", "lm_head.weight"} & set(f.keys())  # transformers 5.24: embed_out (older: lm_head)
    assert len(head) == 1
    assert_bitwise_equal(straight, resumed)  # lm_head included: transformers' own resume leaves it as initialized


class GrowingBuffer(nn.Module):
    """transformers' `test_resume_batch_order` model: a buffer that logs every sequence seen, resized on load."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(VOCAB, VOCAB, bias=False)
        self.register_buffer("data_order", torch.empty(0, dtype=torch.long))

    def load_state_dict(self, state_dict, strict=True):
        if "data_order" in state_dict and self.data_order.shape != state_dict["data_order"].shape:
            self.data_order = state_dict["data_order"].clone()
        return super().load_state_dict(state_dict, strict=strict)

    def forward(self, input_ids, labels=None):
        logits = self.fc(nn.functional.one_hot(input_ids[:, :-1], VOCAB).float())
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        self.data_order = torch.cat([self.data_order, input_ids[:, 0].detach().clone()])
        return {"loss": loss, "logits": logits}


def test_a_model_whose_buffer_grows_resumes_bitwise_with_the_same_data_order(tmp_path):
    straight, resumed, checkpoint = run_and_resume(GrowingBuffer, tmp_path)
    assert load_file(checkpoint / "model.safetensors")["data_order"].numel() == SAVE_AT * 4
    assert_bitwise_equal(straight, resumed)
    assert torch.equal(straight.model.data_order, resumed.model.data_order)


def test_weights_of_another_architecture_are_still_refused(tmp_path):
    """What the check keeps refusing: parameters with no weights in the checkpoint (another architecture)."""
    tiny_neox().save_pretrained(tmp_path)
    verify_checkpoint(tmp_path, deep=False, model=tiny_neox())  # embed_out.weight is lm_head.weight
    with pytest.raises(
        CheckpointCorruptError,
        match=r"Can't find a valid checkpoint at .*; sf_hf found:\n  - .*: no "
        r"weights for \d+ of the model's parameters, e.g. \['lm_head",
    ):
        verify_checkpoint(tmp_path, deep=False, model=tiny_model())


def test_bf16_adapters_stay_bf16_after_the_best_model_is_reloaded(tmp_path):
    """`load_best_model_at_end` loads the adapter with PEFT's `load_adapter`, which casts bf16 adapters to float32."""
    args = config(
        tmp_path,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        sf_fused=False,
    )
    trainer = ScheduleFreeTrainer(model=gpt2_bf16_lora_model(), args=args, train_dataset=TRAIN, eval_dataset=TRAIN)
    trainer.train()
    assert trainer.state.best_model_checkpoint is not None
    assert {p.dtype for p in trained(trainer).values()} == {torch.bfloat16}
