"""lm-evaluation-harness tasks in the checkpoint pipeline: results at x, summary, plots, cards, adapters, errors.

    pytest tests/test_lm_eval.py -q

Every number is checked against `lm_eval.simple_evaluate` run by hand on an `HFLM` built from the reference x
weights (what the optimizer's `.eval()` gave, or the adapter applied with peft), never against the pipeline's
own output. Runs are tiny (a 2-layer Llama with 512 positions, a 300-token BPE) and `--limit` is small.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sf_hf import ScheduleFreeTrainer
from sf_hf.cli import main
from sf_hf.eval_tasks import TASKS_DIR
from sf_hf.models import build_model
from sf_hf.pipeline import PipelineError, convert_checkpoint, evaluate_run, load_model_at_x

from .test_pipeline import (
    WORDS,
    RecordX,
    build_plain_run,
    splits_tokenizer_blocks,
    tree_digest,
    write_corpus,
    write_run_args,
)
from .trainer_utils import config

lm_eval = pytest.importorskip("lm_eval")
POSITIONS = 512  # trained on blocks of 32; room for the bundled task's verses (tokenized with a 300-token BPE)
LIMIT = 4
TASKS = ["local_next_word", "local_text_ppl", "sf_kjv_next_verse"]


@pytest.fixture(autouse=True)
def no_env_report(monkeypatch):
    """`simple_evaluate` ends by collecting torch's environment report (seconds of subprocesses); numbers don't
    depend on it, so the tests skip it, for the pipeline and the hand-run reference alike."""
    import lm_eval.evaluator

    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


def write_local_tasks(folder: Path) -> Path:
    """Two standard lm-eval task YAMLs over a local JSON-lines file, in `folder/tasks`: which word comes next
    (multiple choice, `acc`), and the text's rolling log-likelihood (`bits_per_byte`..., continuous values)."""
    tasks = folder / "tasks"
    tasks.mkdir()
    rows = []
    for i in range(12):
        choices = [WORDS[(i + 5 + 3 * k) % len(WORDS)] for k in range(4)]
        choices[i % 4] = WORDS[(i + 4) % len(WORDS)]
        rows.append({"text": " ".join(WORDS[i : i + 4]), "choices": choices, "label": i % 4})
    data = tasks / "next_word.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (tasks / "local_next_word.yaml").write_text(f"""task: local_next_word
{source}output_type: multiple_choice
doc_to_text: "{{{{text}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (tasks / "local_text_ppl.yaml").write_text(f"""task: local_text_ppl
{source}output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
""")
    return tasks


def build_sf_run(root: Path) -> Path:
    """ScheduleFreeTrainer run: checkpoint-3, checkpoint-6 and the final model, all x."""
    corpus = write_corpus(root)
    _, tokenizer, train = splits_tokenizer_blocks(corpus)
    run_dir = root / "sf_run"
    torch.manual_seed(0)
    model = build_model("llama-tiny", len(tokenizer), POSITIONS, eos_token_id=tokenizer.eos_token_id)
    trainer = ScheduleFreeTrainer(
        model=model,
        train_dataset=train,
        processing_class=tokenizer,
        args=config(
            run_dir,
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            sf_fused=False,
            include_num_input_tokens_seen=True,
        ),
    )
    trainer.train()
    trainer.save_model()
    write_run_args(run_dir, corpus)
    return run_dir


def by_hand(model, folder: Path, tasks, task_dir: Path) -> dict:
    """`lm_eval.simple_evaluate` as its docs show it, on `model` as given."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False, include_path=[str(TASKS_DIR), str(task_dir / "tasks")])
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(folder), batch_size=8)
    return lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=LIMIT, batch_size=8, log_samples=False
    )["results"]


def assert_same_numbers(record: dict, hand: dict) -> None:
    assert set(record["tasks"]) == set(hand)
    for task, values in hand.items():
        metrics = record["tasks"][task]["metrics"]
        expected = {k.split(",")[0]: v for k, v in values.items() if k.endswith(",none") and "_stderr" not in k}
        assert {name: m["value"] for name, m in metrics.items()} == expected  # exactly the same numbers
        for name, metric in metrics.items():
            stderr = values[f"{name}_stderr,none"]
            assert metric["stderr"] == (None if stderr == "N/A" else stderr)
        assert record["tasks"][task]["samples"] == LIMIT


@pytest.fixture(scope="module")
def sf_run(tmp_path_factory):
    return build_sf_run(tmp_path_factory.mktemp("sf"))


def test_tasks_at_x_equal_simple_evaluate_by_hand_with_summary_plots_and_cards(sf_run, tmp_path, capsys):
    run_dir = Path(shutil.copytree(sf_run, tmp_path / "run"))
    tasks = write_local_tasks(tmp_path)  # a YAML file by path, a task of an --include-path folder, a bundled task
    assert (
        main(
            [
                "evaluate",
                str(run_dir),
                "--tasks",
                f"{tasks / 'local_next_word.yaml'},local_text_ppl",
                "--tasks",
                "sf_kjv_next_verse",
                "--include-path",
                str(tasks),
                "--limit",
                str(LIMIT),
            ]
        )
        == 0
    )
    records = {}
    for name, folder in [
        ("checkpoint-3", run_dir / "checkpoint-3"),
        ("checkpoint-6", run_dir / "checkpoint-6"),
        ("final", run_dir),
    ]:
        records[name] = record = json.loads((folder / "eval_results.json").read_text())
        hand = by_hand(AutoModelForCausalLM.from_pretrained(folder), folder, TASKS, tmp_path)
        assert_same_numbers(record, hand)
        assert record["task_failures"] == {} and "eval_loss" in record
    bpb = [
        records[n]["tasks"]["local_text_ppl"]["metrics"]["bits_per_byte"]["value"] for n in ("checkpoint-3", "final")
    ]
    assert bpb[0] != bpb[1]  # two different x, two different numbers

    # the summary and one plot per task hold the JSON files' numbers
    rows = {r.split(",")[0]: r for r in (run_dir / "eval_summary.csv").read_text().splitlines()}
    header = rows["checkpoint"].split(",")
    for name, record in records.items():
        cells = dict(zip(header, rows[name].split(",")))
        for task in TASKS:
            for metric, values in record["tasks"][task]["metrics"].items():
                assert float(cells[f"{task}/{metric}"]) == values["value"]
                if values["stderr"] is not None:
                    assert float(cells[f"{task}/{metric}_stderr"]) == values["stderr"]
    markdown = (run_dir / "eval_summary.md").read_text()
    assert "sf_kjv_next_verse/acc_norm" in markdown
    for task in TASKS:
        assert (run_dir / f"eval_{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # `sf-hf card`: the card push would upload, with a model-index that parses back and lists every task and metric
    capsys.readouterr()
    assert main(["card", str(run_dir), "--repo-id", "org/tiny-sf"]) == 0
    for revision, name in [("step-000000003", "checkpoint-3"), ("step-000000006", "checkpoint-6"), ("main", "final")]:
        folder = run_dir / "cards" / revision
        card = ModelCard.load(folder / "README.md")
        on_card = {
            (r.task_name, r.metric_type): r.metric_value
            for r in card.data.eval_results
            if r.source_name == "lm-evaluation-harness"
        }
        expected = {
            (task, m["metric"]): m["value"]
            for task, entry in records[name]["tasks"].items()
            for m in entry["metrics"].values()
        }
        assert on_card == expected and len(expected) == 6  # acc; 3 perplexities; acc and acc_norm
        assert {r.metric_type for r in card.data.eval_results} >= {"loss", "perplexity", "acc", "acc_norm"}
        acc_norm = records[name]["tasks"]["sf_kjv_next_verse"]["metrics"]["acc_norm"]["value"]
        assert f"| sf_kjv_next_verse | acc_norm | {acc_norm:.4f} |" in card.text
        assert "![sf_kjv_next_verse against tokens seen](eval_sf_kjv_next_verse.png)" in card.text
        assert {p.name for p in folder.iterdir()} == {"README.md", "eval_loss.png"} | {f"eval_{t}.png" for t in TASKS}

    # `push --dry-run` writes the same cards into a preview folder it names, and nothing into the run
    before = tree_digest(run_dir)
    assert (
        main(
            ["push", str(run_dir), "--repo-id", "org/tiny-sf", "--dry-run", "--preview-dir", str(tmp_path / "preview")]
        )
        == 0
    )
    assert str(tmp_path / "preview") in capsys.readouterr().out
    assert tree_digest(run_dir) == before
    preview = (tmp_path / "preview" / "main" / "README.md").read_text()
    assert preview == (run_dir / "cards" / "main" / "README.md").read_text()


def test_plain_trainer_y_checkpoints_run_tasks_at_x(tmp_path):
    run_dir, x_by_step = build_plain_run(tmp_path)
    write_local_tasks(tmp_path)
    evaluation = evaluate_run(
        run_dir, tasks=["local_next_word,local_text_ppl"], include_path=[tmp_path / "tasks"], limit=LIMIT
    )
    assert not evaluation.failures and len(evaluation.results) == 2
    for record in evaluation.results:
        assert record["converted_from"] == "y"
        folder = run_dir / record["checkpoint"]
        both = ["local_next_word", "local_text_ppl"]
        assert_same_numbers(record, by_hand(load_model_at_x(folder), folder, both, tmp_path))  # the same x weights
        model = AutoModelForCausalLM.from_pretrained(folder)
        model.load_state_dict(x_by_step[record["global_step"]], strict=False)  # x as the optimizer's .eval() gave it
        reference = by_hand(model, folder, both, tmp_path)
        at_y = by_hand(AutoModelForCausalLM.from_pretrained(folder), folder, both, tmp_path)
        bits = record["tasks"]["local_text_ppl"]["metrics"]["bits_per_byte"]["value"]
        assert bits == pytest.approx(reference["local_text_ppl"]["bits_per_byte,none"], rel=1e-6)  # x up to 1e-7
        assert bits != pytest.approx(at_y["local_text_ppl"]["bits_per_byte,none"], rel=1e-4)  # y gives other numbers


def test_adapter_checkpoints_are_evaluated_as_base_plus_adapter(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    corpus = write_corpus(tmp_path)
    _, tokenizer, train = splits_tokenizer_blocks(corpus)
    base_dir = tmp_path / "base"
    torch.manual_seed(0)
    build_model("llama-tiny", len(tokenizer), POSITIONS, eos_token_id=tokenizer.eos_token_id).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    run_dir = tmp_path / "lora_run"
    trainer = ScheduleFreeTrainer(
        model=model,
        train_dataset=train,
        processing_class=tokenizer,
        args=config(run_dir, max_steps=4, save_strategy="steps", save_steps=2, sf_fused=False, learning_rate=3e-2),
    )
    trainer.train()
    write_run_args(run_dir, corpus)
    write_local_tasks(tmp_path)
    evaluation = evaluate_run(run_dir, tasks=["local_text_ppl"], include_path=[tmp_path / "tasks"], limit=LIMIT)
    assert not evaluation.failures and [r["checkpoint"] for r in evaluation.results] == ["checkpoint-2", "checkpoint-4"]
    base_only = by_hand(AutoModelForCausalLM.from_pretrained(base_dir), base_dir, ["local_text_ppl"], tmp_path)
    for record in evaluation.results:
        folder = run_dir / record["checkpoint"]
        assert (folder / "adapter_config.json").is_file() and not (folder / "config.json").exists()
        assert record["adapter_base"] == "base"
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), folder)
        hand = by_hand(reference, folder, ["local_text_ppl"], tmp_path)
        assert_same_numbers(record, hand)
        assert hand["local_text_ppl"]["bits_per_byte,none"] != base_only["local_text_ppl"]["bits_per_byte,none"]


def test_failing_task_is_reported_and_other_tasks_and_checkpoints_go_on(sf_run, tmp_path, capsys):
    run_dir = Path(shutil.copytree(sf_run, tmp_path / "run"))
    config_file = run_dir / "checkpoint-3" / "config.json"
    settings = json.loads(config_file.read_text())
    settings["max_position_embeddings"] = 8  # lm-eval refuses continuations longer than the model's context
    config_file.write_text(json.dumps(settings))
    tasks = write_local_tasks(tmp_path)
    assert (
        main(
            [
                "evaluate",
                str(run_dir),
                "--tasks",
                "local_next_word,local_text_ppl,sf_kjv_next_verse",
                "--include-path",
                str(tasks),
                "--limit",
                "2",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "task sf_kjv_next_verse failed on checkpoint-3" in err
    broken = json.loads((run_dir / "checkpoint-3" / "eval_results.json").read_text())
    assert set(broken["task_failures"]) == {"sf_kjv_next_verse"}
    assert set(broken["tasks"]) == {"local_next_word", "local_text_ppl"}
    for folder in (run_dir / "checkpoint-6", run_dir):
        assert set(json.loads((folder / "eval_results.json").read_text())["tasks"]) == set(TASKS)
    assert "sf_kjv_next_verse failed: AssertionError: huggingface.py" in (run_dir / "eval_summary.csv").read_text()


def test_unknown_tasks_list_close_names_and_missing_lm_eval_says_how_to_install(sf_run, monkeypatch, capsys):
    import lm_eval.tasks

    class LocalOnly(lm_eval.tasks.TaskManager):  # lm-eval's 15k built-in tasks take ~40 s to index on 2 cores
        def __init__(self, include_path=None, include_defaults=True, **kwargs):
            super().__init__(include_path=include_path, include_defaults=False, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", LocalOnly)
    assert main(["evaluate", str(sf_run), "--tasks", "sf_kjv_next_vers"]) == 1
    assert "'sf_kjv_next_vers': did you mean sf_kjv_next_verse" in capsys.readouterr().err
    assert main(["evaluate", str(sf_run), "--tasks", "nope.yaml"]) == 1
    assert "Task file or folder not found: nope.yaml" in capsys.readouterr().err

    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if not installed
    assert main(["evaluate", str(sf_run), "--tasks", "sf_kjv"]) == 1
    assert "pip install 'sf_hf[eval]'" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="sf_hf\\[eval\\]"):
        evaluate_run(sf_run, tasks=["sf_kjv"])


def test_bundled_task_files_are_rebuilt_identically_from_the_corpus():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kjv_tasks", TASKS_DIR / "kjv.py")
    kjv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kjv)
    for path, rows in kjv.build_documents().items():
        assert path.read_text(encoding="utf-8") == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        test = [r for r in rows if r["split"] == "test"]
        assert len(test) == kjv.NUM_TEST


def test_callback_runs_tasks_on_each_checkpoint_and_the_hub_branch_carries_them(hub_server, tmp_path):
    from huggingface_hub import hf_hub_download
    from transformers import Trainer, TrainingArguments

    from sf_hf.data import pack_into_blocks
    from sf_hf.pipeline import CheckpointPipelineCallback, DataSpec

    corpus = write_corpus(tmp_path)
    splits, tokenizer, train = splits_tokenizer_blocks(corpus)
    write_local_tasks(tmp_path)
    data = DataSpec(str(corpus), block_size=32, load_options={"validation_fraction": 0.1, "seed": 0})
    pipeline = CheckpointPipelineCallback(
        data=data,
        repo_id="org/live-tasks",
        tasks=["local_text_ppl"],
        include_path=[str(tmp_path / "tasks")],
        limit=LIMIT,
    )
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        optim="schedule_free_adamw",
        lr_scheduler_type="constant",
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        warmup_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    model = build_model("llama-tiny", len(tokenizer), POSITIONS, eos_token_id=tokenizer.eos_token_id)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=pack_into_blocks(splits["train"], tokenizer, 32),
        processing_class=tokenizer,
        callbacks=[pipeline],
    )
    trainer.train()

    assert pipeline.errors == [] and [r["checkpoint"] for r in pipeline.results] == ["checkpoint-2", "checkpoint-4"]
    for record in pipeline.results:
        folder = tmp_path / "run" / record["checkpoint"]
        assert_same_numbers(record, by_hand(load_model_at_x(folder), folder, ["local_text_ppl"], tmp_path))
        revision = f"step-{record['global_step']:09d}"
        card = ModelCard.load(hf_hub_download("org/live-tasks", "README.md", revision=revision))
        on_card = {r.metric_type: r.metric_value for r in card.data.eval_results if r.task_name == "local_text_ppl"}
        assert on_card == {m["metric"]: m["value"] for m in record["tasks"]["local_text_ppl"]["metrics"].values()}
        assert "eval_local_text_ppl.png" in hub_server.files("org/live-tasks", revision)


def test_plain_trainer_y_adapter_checkpoints_convert_to_the_optimizers_x(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from sf_hf.pipeline import inspect_checkpoint

    corpus = write_corpus(tmp_path)
    _, tokenizer, train = splits_tokenizer_blocks(corpus)
    torch.manual_seed(0)
    build_model("llama-tiny", len(tokenizer), 64, eos_token_id=tokenizer.eos_token_id).save_pretrained(tmp_path / "b")
    tokenizer.save_pretrained(tmp_path / "b")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tmp_path / "b"),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    recorder = RecordX()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        optim="schedule_free_adamw",
        max_steps=4,
        lr_scheduler_type="constant",
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        warmup_steps=1,
        weight_decay=0.1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[recorder])
    recorder.trainer = trainer
    trainer.train()
    for step in (2, 4):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        info = inspect_checkpoint(folder)
        assert (info.weights, info.problem, info.adapter_base) == ("y", None, str(tmp_path / "b"))
        x = {n: p for n, p in recorder.x[step].items() if "lora_" in n}
        converted = {n: p.detach() for n, p in load_model_at_x(info).named_parameters() if "lora_" in n}
        torch.testing.assert_close(converted, x, rtol=0, atol=1e-6)
        saved = load_file(folder / "adapter_model.safetensors")  # the file holds y, far from x
        assert max((y - x[k.replace(".weight", ".default.weight")]).abs().max().item() for k, y in saved.items()) > 1e-4
        written = load_file(convert_checkpoint(folder) / "adapter_model.safetensors")  # sf-hf convert: x on disk
        assert written.keys() == saved.keys()
        torch.testing.assert_close(
            {k: written[k] for k in saved},
            {k: x[k.replace(".weight", ".default.weight")] for k in saved},
            rtol=0,
            atol=1e-6,
        )


def test_tasks_on_a_users_own_trainer_run_without_run_args_evaluate_identical_weights_once(
    sf_run, tmp_path, capsys, monkeypatch
):
    """A run made by a user's own `ScheduleFreeTrainer` script (no `run_args.json`): `--tasks` alone evaluates the
    tasks at x and says in one line how to add the loss; `final` (saved right after checkpoint-6, same weights) is
    evaluated once and gets checkpoint-6's numbers."""
    run_dir = Path(shutil.copytree(sf_run, tmp_path / "run"))
    (run_dir / "run_args.json").unlink()
    import sf_hf.pipeline.evaluation as evaluation_module

    calls, original = [], evaluation_module.evaluate_tasks
    monkeypatch.setattr(evaluation_module, "evaluate_tasks", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert main(["evaluate", str(run_dir), "--tasks", "sf_kjv_next_verse", "--limit", str(LIMIT)]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "validation loss skipped" in line]
    assert len(notes) == 1 and "--dataset-name NAME --block-size N" in notes[0]
    assert len(calls) == 2  # checkpoint-3 and checkpoint-6; final holds checkpoint-6's weights
    assert (run_dir / "model.safetensors").read_bytes() == (run_dir / "checkpoint-6" / "model.safetensors").read_bytes()
    for folder in [run_dir / "checkpoint-3", run_dir / "checkpoint-6", run_dir]:
        record = json.loads((folder / "eval_results.json").read_text())
        assert "eval_loss" not in record and record["task_failures"] == {}
        hand = by_hand(AutoModelForCausalLM.from_pretrained(folder), folder, ["sf_kjv_next_verse"], tmp_path)
        assert_same_numbers(record, hand)
    final = json.loads((run_dir / "eval_results.json").read_text())
    assert final["checkpoint"] == "final" and final["same_weights_as"] == "checkpoint-6"
    assert "same weights as checkpoint-6" in (run_dir / "eval_summary.md").read_text()
    assert not (run_dir / "eval_loss.png").exists() and (run_dir / "eval_sf_kjv_next_verse.png").is_file()


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p.mkdir() or p])
def test_evaluate_on_a_missing_or_empty_folder_says_no_run_here(tmp_path, capsys, make):
    folder = make(tmp_path / "empty")
    assert main(["evaluate", str(folder), "--tasks", "sf_kjv_next_verse"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sf-hf evaluate: error: No run here: {folder}")
