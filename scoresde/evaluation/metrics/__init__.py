"""Sample-quality metrics: FID, KID, improved precision/recall, Inception Score, class accuracy, and the
prompt accuracy of digit-pair canvases against their captions (`prompt_accuracy`).

Feature networks by name ("inception": the FID Inception-v3 from a local weights file; "digits": the
shipped 8x8 digits classifier) or any callable features(x) -> (B, F); reference statistics as `.npz`
with `mu` and `sigma` (pytorch-fid / EDM format). See `evaluate` for the one-call entry point and
`run_metrics` for the metric of a training run.
"""
from scoresde.evaluation.metrics.fid import feature_stats, frechet_distance, fid_from_features, load_stats, save_stats
from scoresde.evaluation.metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from scoresde.evaluation.metrics.precision_recall import precision_recall
from scoresde.evaluation.metrics.scores import class_accuracy, inception_score
from scoresde.evaluation.metrics.features import FeatureNet, extract_features, get_feature_net, FEATURE_NETS
from scoresde.evaluation.metrics.inception import InceptionV3, load_inception
from scoresde.evaluation.metrics.digits import DigitsClassifier, digits_split, load_digits_classifier
from scoresde.evaluation.metrics.evaluate import METRICS, Reference, evaluate, floor_metrics, metrics_from_features
from scoresde.evaluation.metrics.files import evaluate_files, load_inputs
from scoresde.evaluation.metrics.runs import run_metric_name, run_metrics
from scoresde.evaluation.metrics.prompt_accuracy import pair_glyphs, prompt_accuracy, prompt_matches


__all__ = [
    "feature_stats", "frechet_distance", "fid_from_features", "load_stats", "save_stats",
    "kid", "mmd2_unbiased", "polynomial_kernel", "precision_recall", "class_accuracy", "inception_score",
    "FeatureNet", "extract_features", "get_feature_net", "FEATURE_NETS",
    "InceptionV3", "load_inception", "DigitsClassifier", "digits_split", "load_digits_classifier",
    "METRICS", "Reference", "evaluate", "evaluate_files", "metrics_from_features", "floor_metrics", "load_inputs",
    "run_metric_name", "run_metrics", "prompt_accuracy", "prompt_matches", "pair_glyphs",
]
