"""MV-InfoNCE and MV-DHEL against slow loops over anchors (instance, view)."""

from __future__ import annotations

import pytest
import torch

from medtriad.losses import get_loss

from ._helpers import NAMES, assert_matches_reference, lse, scattered_missing, unit_batch


def anchors(emb, present):
    """(i, m, positives, negatives_all, negatives_same_view) for every anchor that counts."""
    b = len(next(iter(present.values())))
    out = []
    for i in range(b):
        for m in emb:
            if not present[m][i]:
                continue
            pos = [(i, v) for v in emb if v != m and present[v][i]]
            neg_all = [(j, v) for j in range(b) for v in emb if j != i and present[v][j]]
            neg_view = [(j, m) for j in range(b) if j != i and present[m][j]]
            out.append((i, m, pos, neg_all, neg_view))
    return out


def ref_mv_infonce(emb, present, s):
    terms = []
    for i, m, pos, neg, _ in anchors(emb, present):
        if not pos or not neg:
            continue
        sim = [s * torch.dot(emb[m][i], emb[v][j]) for j, v in pos + neg]
        terms.append(lse(sim) - lse(sim[: len(pos)]))
    return sum(terms) / len(terms)


def ref_mv_dhel(emb, present, s):
    terms = []
    for i, m, pos, _, neg in anchors(emb, present):
        if not pos or not neg:
            continue
        align = sum(s * torch.dot(emb[m][i], emb[v][j]) for j, v in pos) / len(pos)
        terms.append(lse([s * torch.dot(emb[m][i], emb[v][j]) for j, v in neg]) - align)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize(
    ("name", "ref"), [("mv_infonce", ref_mv_infonce), ("mv_dhel", ref_mv_dhel)]
)
def test_multiview_matches_reference(missing: bool, name: str, ref) -> None:
    emb = unit_batch(6, 4, seed=11)
    present = (
        scattered_missing(6) if missing else {m: torch.ones(6, dtype=torch.bool) for m in NAMES}
    )
    loss = get_loss(name)
    assert_matches_reference(
        lambda e, s: loss(e, present, s).total, lambda e, s: ref(e, present, s), emb
    )


@pytest.mark.parametrize("name", ["mv_infonce", "mv_dhel"])
def test_parts_are_per_view_means_that_average_to_the_total(name: str) -> None:
    emb = unit_batch(6, 4, seed=12)
    out = get_loss(name)(emb, {}, 3.0)
    assert set(out.parts) == set(NAMES)
    torch.testing.assert_close(torch.stack(list(out.parts.values())).mean(), out.total)


def test_instance_with_a_single_view_is_no_anchor_but_still_a_negative() -> None:
    emb = unit_batch(5, 4, seed=13)
    rest = torch.tensor([False, True, True, True, True])
    present = {"cxr": torch.ones(5, dtype=torch.bool), "ecg": rest, "report": rest}
    loss = get_loss("mv_infonce")
    assert_matches_reference(
        lambda e, s: loss(e, present, s).total, lambda e, s: ref_mv_infonce(e, present, s), emb
    )
    # cxr of row 0 (single view) is a negative for others: moving it changes the loss
    moved = {m: t.detach().clone() for m, t in emb.items()}
    moved["cxr"][0] = -moved["cxr"][0]
    assert not torch.isclose(loss(emb, present, 3.0).total, loss(moved, present, 3.0).total)
