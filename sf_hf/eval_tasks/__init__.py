"""lm-evaluation-harness tasks shipped with sf_hf: small, offline, over held-out chapters of the embedded corpus.

    sf-hf evaluate runs/llama-small --tasks sf_kjv_next_verse,sf_kjv_cloze      # or --tasks sf_kjv (both)

`sf_kjv_next_verse` (multiple choice, `acc`/`acc_norm`): up to three verses after their chapter heading, and four
candidate next verses (the true one and three of similar length from held-out chapters of other books). `sf_kjv_cloze`
(generation, `exact_match`): a verse without its last word, greedy-decoded, the first word generated compared
with the true one. Test documents come from the chapters the default recipe holds out (`validation_fraction`
0.05, seed 0), few-shot examples from its training chapters. The JSON-lines files are rebuilt, identically,
by `python -m sf_hf.eval_tasks.kjv`.
"""

from ..bundled import package_file

TASKS_DIR = package_file("eval_tasks")
"""The folder lm-eval's `TaskManager` indexes for the bundled tasks (`include_path`)."""
BUNDLED_TASKS = ("sf_kjv_next_verse", "sf_kjv_cloze")
BUNDLED_TAG = "sf_kjv"
