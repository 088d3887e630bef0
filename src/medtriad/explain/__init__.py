"""Explanations of a match between inputs: which patches, ECG time steps and leads, and report
words drive it (`explain_inputs`), scores that check the maps mean something (`quality`), and
those scores over a generated cohort with ground-truth regions (`checks.check_explanations`)."""

from medtriad.explain.attribution import (
    MatchScore,
    Occlusion,
    TextAttribution,
    attention_relevance,
    integrated_gradients,
    lead_occlusion,
    loss_geometry,
    patch_occlusion,
    rollout,
    token_similarity,
)
from medtriad.explain.explain import (
    CxrExplanation,
    EcgExplanation,
    Explanation,
    cxr_maps,
    ecg_maps,
    explain_inputs,
    load_explain_model,
    match_scores,
)

__all__ = [
    "CxrExplanation",
    "EcgExplanation",
    "Explanation",
    "MatchScore",
    "Occlusion",
    "TextAttribution",
    "attention_relevance",
    "cxr_maps",
    "ecg_maps",
    "explain_inputs",
    "integrated_gradients",
    "lead_occlusion",
    "load_explain_model",
    "loss_geometry",
    "match_scores",
    "patch_occlusion",
    "rollout",
    "token_similarity",
]
