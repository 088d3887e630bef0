from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medtriad.explain import token_similarity
from medtriad.index import IndexStore
from medtriad.serve.maps import explain_hits


@pytest.mark.parametrize("geometry", ["cosine", "mip"])
def test_xray_maps_explain_the_match_in_the_index_geometry(
    served_index: Path, geometry: str
) -> None:
    store = IndexStore.open(served_index)
    store.info["geometry"] = geometry
    q = store.embed_query(text="Small left pleural effusion.")
    hits = [h for h in store.search(q, k=6) if store.vector(h.row, "cxr") is not None][:3]
    assert hits
    maps = explain_hits(store, q, hits)
    grid = tuple(store.model.encoders["cxr"].grid)
    for hit, ex in zip(hits, maps):
        # cosine: the query direction; symile: the query times the study's own ECG (its tuple)
        target = q["report"] if geometry == "cosine" else q["report"] * store.vector(hit.row, "ecg")
        x = store.study_batch([hit.row]).inputs["cxr"]
        want = token_similarity(store.model, "cxr", x, torch.from_numpy(target)).numpy()
        np.testing.assert_allclose(np.array(ex["cxr_map"]), want.reshape(grid), atol=2e-4)
