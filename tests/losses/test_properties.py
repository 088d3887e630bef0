"""Properties every loss must have: gradcheck, batch-permutation invariance, better on aligned
embeddings than on random ones, and blindness to the embeddings of masked-out samples."""

from __future__ import annotations

import pytest
import torch

from medtriad.losses import get_loss

from ._helpers import NAMES, aligned_batch, rows_with, scattered_missing, unit_batch

CASES = {
    "clip": ("clip", {"label_smoothing": 0.1}),
    "more": ("more", {}),
    "symile": ("symile", {}),
    "symile_n_squared": ("symile", {"negatives": "n_squared"}),
    "gram": ("gram", {}),
    "siglip": ("siglip", {"chunk_size": 2}),
    "dhn_nce": ("dhn_nce", {}),
    "mv_infonce": ("mv_infonce", {}),
    "mv_dhel": ("mv_dhel", {}),
    "clip_regularized": (
        "clip",
        {"regularizers": {"uniformity": 0.3, "cross_uniformity": 0.2, "alignment": 0.5}},
    ),
}


def build(case: str):
    name, settings = CASES[case]
    return get_loss(name, **settings).double()


def uses_permutations(case: str) -> bool:
    return case == "symile"


def evaluate(loss, case, emb, present, scale, perms=None):
    present = present or {
        m: torch.ones(len(next(iter(emb.values()))), dtype=torch.bool) for m in emb
    }
    if uses_permutations(case):
        if perms is None:
            perms = loss.draw_permutations(tuple(emb), len(rows_with(present, *emb)))
        return loss(emb, present, scale, permutations=perms)
    return loss(emb, present, scale)


def leaves(emb):
    return {m: t.detach().clone().requires_grad_() for m, t in emb.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_on_small_float64_inputs(case: str) -> None:
    loss = build(case)
    present = scattered_missing(5)
    emb = unit_batch(5, 3, seed=20)
    perms = (
        loss.draw_permutations(NAMES, len(rows_with(present, *NAMES)))
        if uses_permutations(case)
        else None
    )

    def fn(cxr, ecg, report, scale):
        return evaluate(
            loss, case, {"cxr": cxr, "ecg": ecg, "report": report}, present, scale, perms
        ).total

    inputs = (*emb.values(), torch.tensor(3.0, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(fn, inputs)


def conjugate(perms, index_map):
    """Permutations for a reordered selection: position q' holds old position index_map[q']."""
    inverse = torch.argsort(index_map)
    return {a: {m: inverse[p[index_map]] for m, p in inner.items()} for a, inner in perms.items()}


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_permuting_the_batch_changes_nothing(case: str, missing: bool) -> None:
    b = 7
    loss = build(case)
    present = (
        scattered_missing(b) if missing else {m: torch.ones(b, dtype=torch.bool) for m in NAMES}
    )
    emb = leaves(unit_batch(b, 4, seed=21))
    sigma = torch.tensor([3, 6, 0, 5, 1, 4, 2])
    emb_p = leaves({m: t[sigma] for m, t in emb.items()})
    present_p = {m: t[sigma] for m, t in present.items()}

    perms = perms_p = None
    if uses_permutations(case):
        idx = rows_with(present, *NAMES)
        perms = loss.draw_permutations(NAMES, len(idx))
        idx_p = rows_with(present_p, *NAMES)
        perms_p = conjugate(perms, torch.tensor([idx.index(int(sigma[q])) for q in idx_p]))

    out = evaluate(loss, case, emb, present, 6.0, perms)
    out_p = evaluate(loss, case, emb_p, present_p, 6.0, perms_p)
    torch.testing.assert_close(out_p.total, out.total)
    (out.total + out_p.total).backward()
    for m in NAMES:
        torch.testing.assert_close(emb_p[m].grad, emb[m].grad[sigma])


@pytest.mark.parametrize("case", sorted(CASES))
def test_aligned_embeddings_score_lower_than_random_ones(case: str) -> None:
    loss = build(case)
    aligned = evaluate(loss, case, aligned_batch(6, 8), {}, 10.0).total
    random = [evaluate(loss, case, unit_batch(6, 8, seed=s), {}, 10.0).total for s in range(3)]
    assert all(aligned < r for r in random)


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_out_embeddings_change_neither_loss_nor_gradients(case: str) -> None:
    present = scattered_missing(7)
    emb = leaves(unit_batch(7, 4, seed=22))
    changed = {m: t.detach().clone() for m, t in emb.items()}
    for k, m in enumerate(NAMES):
        changed[m][~present[m]] = float("nan") if k == 0 else 1e3  # garbage where absent
    changed = leaves(changed)

    results = []
    for e in (emb, changed):
        fresh = build(case)  # same seed, so Symile draws the same negatives
        out = evaluate(fresh, case, e, present, 4.0)
        out.total.backward()
        results.append((out, e))
    (out_a, emb_a), (out_b, emb_b) = results
    torch.testing.assert_close(out_b.total, out_a.total)
    for m in NAMES:
        assert torch.equal(emb_b[m].grad[~present[m]], torch.zeros_like(emb_b[m].grad[~present[m]]))
        torch.testing.assert_close(emb_b[m].grad, emb_a[m].grad)
