"""Scoring for hydrahead_niah.yaml: RULER's string_match_all, from hydrahead, on hydrahead's 0-100 scale."""

from hydrahead.tasks.scoring import postprocess_pred, sample_match_all


def process_results(doc, results):
    return {"string_match_all": 100 * sample_match_all(postprocess_pred(results[0]), doc["outputs"])}
