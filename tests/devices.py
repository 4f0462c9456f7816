"""Where the device-aware tests run: CPU and float32 parameters unless the environment says otherwise.

    SF_HF_TEST_DEVICE=cuda SF_HF_TEST_DTYPE=bfloat16 pytest tests/test_exact_resume.py tests/test_fused.py -q

`benchmarks/gpu_check.py` runs the x/y, checkpoint, exact-resume and fused-kernel tests so on a GPU: the same tests
with the same assertions, on another device. An environment variable rather than a parametrization over the
devices found: the CPU suite stays exactly what it is (same tests, same ids, also on a machine with a GPU), and the
device is chosen once per process, before CUDA starts, as its determinism settings must be (tests/conftest.py).

* `SF_HF_TEST_DEVICE` (default `cpu`): where `test_optimizers.make_params`/`set_grads` put their tensors and where
  the Trainer tests train (`trainer_utils.config` sets `use_cpu` only for `cpu`).
* `SF_HF_TEST_DTYPE` (default `float32`): the parameters' dtype of `trainer_utils.tiny_model`/`tiny_hub_model`;
  tests that choose a dtype themselves keep theirs.
"""

import os

import torch

TEST_DEVICE = torch.device(os.environ.get("SF_HF_TEST_DEVICE", "cpu"))
TEST_DTYPE = getattr(torch, os.environ.get("SF_HF_TEST_DTYPE", "float32"))
