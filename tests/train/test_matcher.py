"""HungarianMatcher: SAM3's cost, optimal (not greedy) assignment, edge cases."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from medsam3.train.matcher import HungarianMatcher


def _xyxy(cxcywh):
    return box_convert(torch.tensor(cxcywh, dtype=torch.float32), "cxcywh", "xyxy")


def test_optimal_assignment_beats_greedy():
    # Targets A (x=0.3) and B (x=0.4). Query 0 (x=0.34) is the best match for A *and* the only good
    # one for B; query 1 (x=0.22) is fair for A and poor for B; query 2 is far from both.
    # Greedy (A first) would take query 0 for A and leave query 1 for B; the optimum swaps them.
    targets = torch.tensor([[0.3, 0.5, 0.1, 0.1], [0.4, 0.5, 0.1, 0.1]])
    preds = _xyxy([[0.34, 0.5, 0.1, 0.1], [0.22, 0.5, 0.1, 0.1], [0.9, 0.9, 0.05, 0.05]])
    logits = torch.zeros(1, 3)
    matcher = HungarianMatcher()
    cost = matcher.cost_matrix(logits[0], preds, targets)
    assert cost[0, 0] < cost[1, 0]  # query 0 is A's nearest: what greedy would grab
    [(src, tgt)] = matcher(logits, preds[None], [targets])
    assert dict(zip(tgt.tolist(), src.tolist())) == {0: 1, 1: 0}


def test_confident_query_wins_a_tie():
    targets = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    preds = _xyxy([[0.5, 0.5, 0.2, 0.2]] * 3)
    logits = torch.tensor([[-3.0, 4.0, 0.0]])
    [(src, _)] = HungarianMatcher()(logits, preds[None], [targets])
    assert src.tolist() == [1]


def test_cost_matches_sam3_formula_and_brute_force():
    g = torch.Generator().manual_seed(0)
    q, n = 5, 3
    logits = torch.randn(q, generator=g) * 2
    centres = torch.rand(q, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(q, 2, generator=g) * 0.2 + 0.05
    preds = box_convert(torch.cat([centres, sizes], 1), "cxcywh", "xyxy")
    targets = torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.2 + 0.05], 1)
    matcher = HungarianMatcher()

    p = logits.sigmoid()
    cls = 0.25 * (1 - p) ** 2 * -torch.log(p) - 0.75 * p**2 * -torch.log(1 - p)
    l1 = (box_convert(preds, "xyxy", "cxcywh")[:, None] - targets[None]).abs().sum(-1)
    giou = generalized_box_iou(preds, box_convert(targets, "cxcywh", "xyxy"))
    expected = 2 * cls[:, None] + 5 * l1 - 2 * giou
    cost = matcher.cost_matrix(logits, preds, targets)
    torch.testing.assert_close(cost, expected, atol=1e-5, rtol=1e-5)

    [(src, tgt)] = matcher(logits[None], preds[None], [targets])
    best = min(
        sum(expected[r, c].item() for r, c in zip(rows, range(n))) for rows in itertools.permutations(range(q), n)
    )
    assert expected[src, tgt].sum().item() == pytest.approx(best, abs=1e-5)


def test_empty_targets_more_targets_than_queries_and_batch():
    matcher = HungarianMatcher()
    preds = _xyxy([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    logits = torch.zeros(2)
    many = torch.rand(5, 4) * 0.3 + 0.2
    out = matcher(
        torch.stack([logits, logits, logits]), torch.stack([preds, preds, preds]), [torch.zeros(0, 4), many, many[:1]]
    )
    assert out[0][0].numel() == 0 and out[0][1].numel() == 0
    assert len(out[1][0]) == 2 and len(set(out[1][1].tolist())) == 2  # only Q targets can be matched
    assert len(out[2][0]) == 1
    assert all(s.dtype == torch.long for s, _ in out)
    with pytest.raises(ValueError):
        matcher(logits[None], preds[None], [many, many])


def test_non_finite_costs_do_not_crash():
    preds = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.3, 0.3]]])  # first box has zero area
    targets = [torch.tensor([[0.5, 0.5, 0.0, 0.0]])]  # degenerate target: GIoU is NaN
    [(src, tgt)] = HungarianMatcher()(torch.zeros(1, 2), preds, targets)
    assert len(src) == 1
