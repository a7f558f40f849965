"""A fusion of encoders: standardised distances summed per query, scored like any model."""

from __future__ import annotations

import numpy as np
import pytest

from reidray.errors import CellError
from reidray.score import evaluate
from reidray.score.fusion import evaluate_fused


def complementary(seed: int = 0) -> dict:
    """64 identities = 8 colours x 8 shapes. One encoder sees only colour, the other only shape
    (each with noise), so each alone confuses an identity with the 7 that share its colour or
    its shape; together they tell all 64 apart."""
    rng = np.random.default_rng(seed)
    colours, shapes = rng.standard_normal((8, 16)) * 2, rng.standard_normal((8, 24)) * 2

    def images(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        colour = colours[pids // 8] + rng.standard_normal((len(pids), 16))
        shape = 5 * (shapes[pids % 8] + rng.standard_normal((len(pids), 24)))  # another scale: z-scores level it
        return colour.astype(np.float32), shape.astype(np.float32)

    q_pids, g_pids = np.repeat(np.arange(64), 2), np.repeat(np.arange(64), 4)
    (qa, qb), (ga, gb) = images(q_pids), images(g_pids)
    labels = (q_pids, g_pids, np.zeros(128, int), np.ones(256, int))
    return {"a": (qa, ga, "cosine"), "b": (qb, gb, "euclidean"), "labels": labels}


def test_a_fusion_of_complementary_encoders_beats_both() -> None:
    p = complementary()
    alone = [evaluate(q, g, *p["labels"], metric=m)["mAP"] for q, g, m in (p["a"], p["b"])]
    fused = evaluate_fused([p["a"], p["b"]], [0.5, 0.5], *p["labels"])["mAP"]
    assert max(alone) < 0.5 and fused > max(alone) + 0.3, (alone, fused)


@pytest.mark.parametrize("member", [0, 1])
def test_a_member_alone_ranks_as_its_encoder(member: int) -> None:
    """Standardising is monotone per query: weight on one member only gives its own metrics."""
    p = complementary(1)
    junk = np.zeros(256, bool)
    junk[::17] = True
    q, g, metric = (p["a"], p["b"])[member]
    weights = [1.0, 0.0] if member == 0 else [0.0, 2.0]
    fused = evaluate_fused([p["a"], p["b"]], weights, *p["labels"], g_junk=junk, chunk_size=7)
    plain = evaluate(q, g, *p["labels"], metric=metric, g_junk=junk)
    assert fused["mAP"] == pytest.approx(plain["mAP"], abs=1e-9)
    np.testing.assert_allclose(fused["cmc"], plain["cmc"], atol=1e-9)


def test_members_of_different_image_sets_are_refused() -> None:
    p = complementary()
    qa, ga, metric = p["a"]
    with pytest.raises(CellError, match="differ in size"):
        evaluate_fused([p["a"], (qa, ga[:-1], metric)], [1, 1], *p["labels"])
    with pytest.raises(CellError, match="one weight per member"):
        evaluate_fused([p["a"], p["b"]], [1], *p["labels"])
