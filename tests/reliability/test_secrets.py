"""Hub tokens (a TrainingArguments argument, the environment, `sf-hf push --token`) never appear in a file sf_hf
writes, in a byte it uploads (outside the Authorization header), or in its console output.

    pytest tests/reliability/test_secrets.py -q

One real run of `recipes/pretrain.py` pushing every checkpoint to the local fake Hub (`hub_server`), then
`sf-hf evaluate` and two `sf-hf push` (token as argument, token from HF_TOKEN); every written file, every request
(bodies, files inside commit payloads, headers) and all console output is searched for the tokens.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from sf_hf.cli import main as sf_hf_cli

from ..test_pipeline import write_corpus

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "pretrain.py"
MARK = "LEAKCHECK"  # in every token: any partial print (a prefix, a suffix) that keeps it is found as well
TOKENS = {
    "argument": f"hf_sfhf{MARK}argument0123456789",
    "environment": f"hf_sfhf{MARK}environment0123456",
    "cli": f"hf_sfhf{MARK}cliargument01234567",
}
TINY = [
    "--model_preset",
    "llama-tiny",
    "--max_steps",
    "4",
    "--save_steps",
    "2",
    "--eval_steps",
    "2",
    "--block_size",
    "32",
    "--global_batch_size",
    "4",
    "--per_device_train_batch_size",
    "4",
    "--tokenizer_vocab_size",
    "300",
    "--max_eval_blocks",
    "8",
    "--logging_steps",
    "1",
]


def leaks(data: bytes) -> list:
    return [name for name, token in TOKENS.items() if token.encode() in data] + (
        ["a fragment"] if MARK.encode() in data else []
    )


@pytest.mark.skipif(not RECIPE.is_file(), reason="recipes/pretrain.py is not in this checkout")
def test_tokens_never_written_uploaded_or_printed(hub_server, tmp_path, monkeypatch, capfd):
    for token in TOKENS.values():
        hub_server.add_token(token)
    corpus = write_corpus(tmp_path)
    out = tmp_path / "run"
    env = hub_server.subprocess_env(token=TOKENS["environment"], OMP_NUM_THREADS="1")
    train = subprocess.run(
        [
            sys.executable,
            str(RECIPE),
            *TINY,
            "--dataset_name",
            str(corpus),
            "--output_dir",
            str(out),
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "org/recipe-run",
            "--hub_strategy",
            "all_checkpoints",
            "--hub_token",
            TOKENS["argument"],
            "--report_to",
            "tensorboard",
            "--log_level",
            "info",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:].decode(errors="replace")
    assert sf_hf_cli(["evaluate", str(out)]) == 0
    assert sf_hf_cli(["push", str(out), "--repo-id", "org/cli-run", "--token", TOKENS["cli"]]) == 0
    monkeypatch.setenv("HF_TOKEN", TOKENS["environment"])
    assert sf_hf_cli(["push", str(out), "--repo-id", "org/env-run"]) == 0
    console = capfd.readouterr()

    # every token was really used, and only as a credential
    used = {r.headers.get("authorization", "").removeprefix("Bearer ") for r in hub_server.requests}
    assert set(TOKENS.values()) <= used
    commits = {
        r.path.split("/api/models/")[1].split("/commit/")[0]
        for r in hub_server.requests_matching(method="POST", path_contains="/commit/")
    }
    assert {"org/recipe-run", "org/cli-run", "org/env-run"} <= commits
    assert (out / "training_args.bin").is_file()
    # transformers' pushes upload the pickled arguments: sf_hf's config classes pickle without their tokens
    assert "training_args.bin" in hub_server.files("org/recipe-run")
    assert list(out.glob("runs/**/*tfevents*")) and (out / "checkpoint-4" / "trainer_state.json").is_file()

    written = [p for root in (tmp_path, Path(hub_server.hf_home)) for p in root.rglob("*") if p.is_file()]
    found = {str(p): leaks(p.read_bytes()) for p in written}
    found["recipe stdout"], found["recipe stderr"] = leaks(train.stdout), leaks(train.stderr)
    found["sf-hf stdout"], found["sf-hf stderr"] = leaks(console.out.encode()), leaks(console.err.encode())
    for i, request in enumerate(hub_server.requests):
        found[f"request {i} {request.method} {request.path} body"] = [
            leak for payload in request.payloads() for leak in leaks(payload)
        ]
        found[f"request {i} headers"] = [
            leak for name, value in request.headers.items() if name != "authorization" for leak in leaks(value.encode())
        ]
    assert {where: what for where, what in found.items() if what} == {}
    print(
        f"\nsecrets: {len(written)} files, {len(hub_server.requests)} requests "
        f"({sum(len(p) for r in hub_server.requests for p in r.payloads())} bytes), "
        f"{len(train.stdout) + len(train.stderr) + len(console.out) + len(console.err)} console bytes searched"
    )
