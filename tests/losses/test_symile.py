"""Symile (n and n_squared negatives) against slow loops written from the MIP formula."""

from __future__ import annotations

import pytest
import torch

from medtriad.errors import ConfigError
from medtriad.losses import get_loss

from ._helpers import NAMES, assert_matches_reference, lse, rows_with, scattered_missing, unit_batch


def mip(*vectors):
    out = vectors[0]
    for v in vectors[1:]:
        out = out * v
    return out.sum()


def ref_symile_n(emb, present, s, perms):
    """perms[anchor][other] permutes positions among the rows holding every modality."""
    idx = rows_with(present, *emb)
    terms = []
    for a in emb:
        others = [m for m in emb if m != a]
        total = 0
        for p, i in enumerate(idx):
            logits = []
            for q, j in enumerate(idx):
                if q == p:
                    logits.append(s * mip(emb[a][i], *[emb[m][i] for m in others]))
                else:
                    logits.append(
                        s * mip(emb[a][i], *[emb[m][idx[int(perms[a][m][q])]] for m in others])
                    )
            total = total + lse(logits) - logits[p]
        terms.append(total / len(idx))
    return sum(terms) / len(terms)


def ref_symile_n_squared(emb, present, s):
    idx = rows_with(present, *emb)
    terms = []
    for a in emb:
        u, v = (emb[m] for m in emb if m != a)
        total = 0
        for i in idx:
            logits = [s * mip(emb[a][i], u[j], v[k]) for j in idx for k in idx]
            total = total + lse(logits) - s * mip(emb[a][i], u[i], v[i])
        terms.append(total / len(idx))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("names", [NAMES, ("a", "b", "c", "d")])
def test_symile_n_matches_reference(missing: bool, names: tuple[str, ...]) -> None:
    emb = unit_batch(7, 5, names=names)
    present = (
        scattered_missing(7, names)
        if missing
        else {m: torch.ones(7, dtype=torch.bool) for m in names}
    )
    loss = get_loss("symile", seed=3)
    perms = loss.draw_permutations(names, len(rows_with(present, *names)))
    assert_matches_reference(
        lambda e, s: loss(e, present, s, permutations=perms).total,
        lambda e, s: ref_symile_n(e, present, s, perms),
        emb,
    )


@pytest.mark.parametrize("missing", [False, True])
def test_symile_n_squared_matches_reference(missing: bool) -> None:
    emb = unit_batch(6, 4, seed=1)
    present = (
        scattered_missing(6) if missing else {m: torch.ones(6, dtype=torch.bool) for m in NAMES}
    )
    loss = get_loss("symile", negatives="n_squared", chunk_elements=40)  # forces several chunks
    assert_matches_reference(
        lambda e, s: loss(e, present, s).total,
        lambda e, s: ref_symile_n_squared(e, present, s),
        emb,
    )


def test_symile_draws_from_its_seed_and_advances() -> None:
    emb = unit_batch(8, 4, seed=2)
    first = [get_loss("symile", seed=11)(emb, {}, 5.0).total for _ in range(2)]
    loss = get_loss("symile", seed=11)
    again = [loss(emb, {}, 5.0).total, loss(emb, {}, 5.0).total]
    torch.testing.assert_close(first[0], again[0])
    assert not torch.isclose(again[0], again[1])  # the generator moved on


def test_symile_uses_the_given_generator() -> None:
    emb = unit_batch(8, 4, seed=2)
    a = get_loss("symile", generator=torch.Generator().manual_seed(5))(emb, {}, 5.0).total
    b = get_loss("symile", seed=5)(emb, {}, 5.0).total
    torch.testing.assert_close(a, b)


def test_n_squared_needs_three_modalities() -> None:
    emb = unit_batch(4, 3, names=("cxr", "ecg"))
    with pytest.raises(ConfigError) as exc:
        get_loss("symile", negatives="n_squared")(emb, {}, 1.0)
    assert exc.value.key == "loss.negatives"


def test_unknown_negatives_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        get_loss("symile", negatives="all")
    assert exc.value.key == "loss.negatives"
