"""`evaluate` metric module: the fraction of next tokens a causal LM predicts exactly (argmax).

    sf-hf evaluate runs/llama-small --metric next_token_accuracy

Loaded by path with `evaluate.load` (see `sf_hf.pipeline.evaluation.load_metric`), so it works offline; it is
also the template for a local metric of your own: `--metric path/to/my_metric.py`.
"""

import datasets
import evaluate


class NextTokenAccuracy(evaluate.Metric):
    """Accuracy of next-token predictions: `predictions` are argmax token ids, `references` the true next ids."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Fraction of positions where the argmax prediction is the true next token.",
            citation="",
            inputs_description="predictions: predicted token ids; references: true next-token ids (same length).",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references) -> dict:
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"next_token_accuracy": correct / len(references)}
