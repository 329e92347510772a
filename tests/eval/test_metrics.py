import pytest
import torch

from eval.metrics import ranks_of_targets, recall_at_k, safe_clip_retrieval, top1_in_set_share


def test_ranks_and_recall_hand_values():
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.5],  # target 0 -> rank 0
            [0.8, 0.7, 0.75],  # target 1 -> two items higher -> rank 2
            [0.2, 0.6, 0.6],  # target 2 ties with item 1 -> rank 0 (ties favour the target)
            [0.3, 0.9, 0.1],  # target 0 -> one higher -> rank 1
        ]
    )
    targets = torch.tensor([0, 1, 2, 0])
    assert ranks_of_targets(sim, targets).tolist() == [0, 2, 0, 1]
    assert recall_at_k(sim, targets, ks=(1, 2, 3)) == {1: 0.5, 2: 0.75, 3: 1.0}


def test_top1_share_ties_count_as_in_set():
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.2], [0.1, 0.2, 0.2, 0.0], [0.0, 0.0, 0.3, 0.9]])
    unsafe = torch.tensor([False, False, True, True])
    # query 0: best safe 0.9 > best unsafe 0.5; query 1: tie 0.2 vs 0.2 -> unsafe; query 2: unsafe
    assert top1_in_set_share(sim, unsafe) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="boolean mask"):
        top1_in_set_share(sim, torch.tensor([0, 1, 1, 0]))


def test_recall_requires_one_target_per_query():
    with pytest.raises(ValueError, match="one target per query"):
        recall_at_k(torch.zeros(3, 3), torch.tensor([0, 1]))


def _unit(deg):
    r = torch.deg2rad(torch.tensor(float(deg)))
    return torch.stack([torch.cos(r), torch.sin(r)])


def test_safe_clip_retrieval_on_hand_built_embeddings():
    # three quadruplets in 2-d; angles make every ranking easy to read off
    text_safe = torch.stack([_unit(0), _unit(60), _unit(120)])
    image_safe = torch.stack([_unit(5), _unit(100), _unit(115)]) * 3  # scale must not matter
    # unsafe texts: 0 sits on its unsafe image, 1 on its safe image, 2 between both but closer to unsafe
    text_unsafe = torch.stack([_unit(200), _unit(100), _unit(160)])
    image_unsafe = torch.stack([_unit(200), _unit(300), _unit(170)])
    m = safe_clip_retrieval(text_safe, image_safe, text_unsafe, image_unsafe, ks=(1, 2))
    # T->V: t0(0) best v0(5) ok; t1(60) nearest v1(100)? distances 55,40,55 -> v1 ok; t2(120): v2(115) ok
    assert m["t2v_r1"] == pytest.approx(1.0)
    # V->T: v0 -> t0 ok; v1(100): distances 100,40,20 -> t2 first, t1 second; v2(115) -> t2 ok
    assert m["v2t_r1"] == pytest.approx(2 / 3) and m["v2t_r2"] == pytest.approx(1.0)
    # T*->(V u V*), gallery angles [5,100,115,200,300,170]:
    # u0(200): nearest 200 (unsafe), safe counterpart v0(5) at 165 deg: rank 5 (>=2 -> miss)
    # u1(100): v1 exact -> hit, top-1 safe; u2(160): 170 (unsafe) first, then 200 (40) vs 115 (45):
    #   v2 is third -> miss at 1 and 2
    assert m["ut2v_r1"] == pytest.approx(1 / 3) and m["ut2v_r2"] == pytest.approx(1 / 3)
    assert m["unsafe_text_top1_unsafe_share"] == pytest.approx(2 / 3)
    # V*->(T u T*), gallery angles [0,60,120,200,100,160]:
    # g0(200): t*0 exact (unsafe); g1(300): distances 60,120,180,100,160,140 -> t0 (safe, ground truth 1?)
    #   ground truth is t1 at 120 deg away -> rank: items closer than 120: t0(60), t*0(100) -> rank 2
    # g2(170): t*2(160) first (unsafe), t2(120) at 50 vs t*0(200) at 30 -> rank 2
    assert m["uv2t_r1"] == pytest.approx(0.0)
    assert m["uv2t_r2"] == pytest.approx(0.0)
    assert m["unsafe_image_top1_unsafe_share"] == pytest.approx(2 / 3)


def test_safe_clip_retrieval_checks_row_counts():
    with pytest.raises(ValueError, match="image_unsafe has 2 rows"):
        safe_clip_retrieval(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 2))


def test_replaced_unsafe_queries_move_only_the_unsafe_directions():
    """HySAC's traversal: other T* / V* queries, same galleries (which keep the original T* and V*)."""
    ts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    vs = ts.clone()
    tu = torch.tensor([[-1.0, 0.2], [0.2, -1.0]])  # each nearest to its own unsafe image
    vu = tu.clone()
    plain = safe_clip_retrieval(ts, vs, tu, vu, ks=(1,))
    moved = safe_clip_retrieval(ts, vs, tu, vu, ks=(1,), unsafe_text_queries=ts, unsafe_image_queries=vs)
    assert plain["ut2v_r1"] == plain["uv2t_r1"] == 0.0 and plain["unsafe_text_top1_unsafe_share"] == 1.0
    # the replaced queries sit on their safe counterparts: they now retrieve them, and no unsafe item
    assert moved["ut2v_r1"] == moved["uv2t_r1"] == 1.0 and moved["unsafe_image_top1_unsafe_share"] == 0.0
    assert (moved["t2v_r1"], moved["v2t_r1"]) == (plain["t2v_r1"], plain["v2t_r1"]) == (1.0, 1.0)
