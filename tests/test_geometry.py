"""Tests for paperlab.geometry: the shipped WordNet subset, concept extraction, whitening, the estimator on
planted structure and on shuffled data, the corpus and LM, interventions, and bad input."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from paperlab.geometry import experiments as E
from paperlab.geometry.estimate import (
    Whitening,
    cosine,
    estimate_vector,
    estimate_vectors,
    held_out_projections,
    ledoit_wolf,
    pinv_times,
    projection,
    sibling_orthogonality,
    whiten,
)
from paperlab.geometry.hf import single_token_lemmas
from paperlab.geometry.hierarchy import (
    DATA_FILE,
    MERGE_MARGIN,
    concept_tokens,
    extract_concepts,
    load_hierarchy,
)
from paperlab.geometry.lm import (
    CorpusConfig,
    HierarchyCorpus,
    LMConfig,
    check_width,
    lemma_logits,
    make_model,
    train_lm,
)
from paperlab.geometry.synthetic import PlantedConfig, planted_unembeddings
from paperlab.train import TrainConfig


@pytest.fixture(scope="module")
def hierarchy():
    return load_hierarchy()


@pytest.fixture(scope="module")
def corpus(hierarchy):
    return HierarchyCorpus(CorpusConfig(), hierarchy)


# ------------------------------------------------------------------------------------ shipped data
def test_shipped_subset_loads_with_expected_counts(hierarchy):
    assert len(hierarchy.lemmas) == int(hierarchy.header["n_synsets"]) == 4228
    assert len(hierarchy.all_lemmas) == int(hierarchy.header["n_lemmas"]) == 4609
    assert hierarchy.roots == ("animal.n.01", "plant.n.02")
    assert hierarchy.hypernyms["dog.n.01"] == ("canine.n.02", "domestic_animal.n.01")  # WordNet 3.0
    assert "dog" in hierarchy.lemmas["dog.n.01"]
    assert "mammal.n.01" in hierarchy.ancestors("dog.n.01")
    assert math.isclose(hierarchy.path_similarity("dog.n.01", "dog.n.01"), 1.0)
    assert (
        0
        < hierarchy.path_similarity("dog.n.01", "oak.n.02")
        < hierarchy.path_similarity("dog.n.01", "cat.n.01")
    )
    licence = (DATA_FILE.parent / "LICENSE").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in licence


# ------------------------------------------------------------------------------ concept extraction
def test_hierarchy_extraction_is_deterministic_and_nested(hierarchy):
    vocabulary = hierarchy.all_lemmas
    a = extract_concepts(hierarchy, vocabulary, 20)
    b = extract_concepts(hierarchy, list(reversed(vocabulary)), 20)
    assert a == b
    assert a.names[0] == "animal.n.01" and a.parent["animal.n.01"] is None
    assert {"mammal.n.01", "bird.n.01", "fish.n.01", "reptile.n.01"} <= set(a.names)
    for child in a.names:
        parent = a.parent[child]
        assert len(a.tokens[child]) >= 20
        if parent is not None:
            assert set(a.tokens[child]) <= set(a.tokens[parent])
            assert a.tokens[child] != a.tokens[parent]  # single-child chains merged
            assert a.names.index(parent) < a.names.index(child)  # hierarchy (depth-first) order
            if a.children(parent) == [child]:  # an only child keeps MERGE_MARGIN lemmas of its parent's apart
                assert len(set(a.tokens[parent]) - set(a.tokens[child])) >= MERGE_MARGIN
    # marsupial (20 lemmas) under metatherian (21): collapsed into metatherian, as the reference code does
    assert "metatherian.n.01" in a.names and "marsupial.n.01" not in a.names


def test_unknown_synset_and_too_few_tokens_raise(hierarchy):
    with pytest.raises(KeyError, match="unknown synset 'dgo.n.01'"):
        hierarchy.descendants("dgo.n.01")
    with pytest.raises(KeyError, match="unknown synset"):
        extract_concepts(hierarchy, hierarchy.all_lemmas, 10, roots=("car.n.01",))
    with pytest.raises(ValueError, match="concept 'mammal.n.01' has 3 tokens.*min_tokens = 10"):
        concept_tokens(hierarchy, "mammal.n.01", ["dog", "cat", "horse", "oak"], 10)
    with pytest.raises(ValueError, match="root concept 'animal.n.01' has 2 tokens"):
        extract_concepts(hierarchy, ["dog", "cat"], 10)
    with pytest.raises(ValueError, match="concept 'x' has 1 tokens, fewer than min_tokens"):
        estimate_vectors(torch.randn(10, 3, dtype=torch.float64), {"x": [0]})
    concepts = extract_concepts(hierarchy, hierarchy.all_lemmas, 20)
    with pytest.raises(KeyError, match="is not a concept here"):
        concepts.check("aardvark.n.01")


# -------------------------------------------------------------------------------------- whitening
def test_whitened_embeddings_have_zero_mean_and_identity_covariance():
    generator = torch.Generator().manual_seed(0)
    gamma = torch.randn(3000, 24, generator=generator) @ torch.randn(24, 24, generator=generator) + 5.0
    g = whiten(gamma)
    assert g.mean(0).abs().max() < 1e-10
    assert (g.T @ g / len(g) - torch.eye(24, dtype=g.dtype)).abs().max() < 1e-10
    whitening = Whitening(gamma)  # an added hidden-state direction A^T l moves logits by l . g(y) + const
    l, hidden = torch.randn(24, dtype=torch.float64), torch.randn(24, dtype=torch.float64)
    shift = (hidden + whitening.to_embedding_direction(l)) @ gamma.double().T - hidden @ gamma.double().T
    assert torch.allclose(shift - shift[0], (g @ l) - (g @ l)[0], atol=1e-8)


def test_vocabulary_not_larger_than_width_raises(corpus):
    with pytest.raises(ValueError, match="singular.*vocab much larger than d"):
        Whitening(torch.randn(16, 16))
    with pytest.raises(ValueError, match="vocabulary size 100 is not much larger than the model width"):
        check_width(100, 64)
    with pytest.raises(ValueError, match="not much larger than the model width d_model = 2048"):
        make_model(LMConfig(d_model=2048, n_heads=4), corpus)


# -------------------------------------------------------------------------------------- estimator
def test_ledoit_wolf_is_scikit_learns():
    from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

    generator = torch.Generator().manual_seed(3)
    for n, d in ((12, 5), (40, 8), (6, 10)):  # fewer tokens than dimensions too, as for small concepts
        x = torch.randn(n, d, generator=generator, dtype=torch.float64) * torch.linspace(0.2, 3.0, d)
        covariance, shrinkage = ledoit_wolf(x)
        expected, expected_shrinkage = sklearn_ledoit_wolf(x.numpy())
        assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-9)
        torch.testing.assert_close(covariance, torch.from_numpy(expected), rtol=1e-9, atol=1e-12)


def test_ledoit_wolf_shrinks_towards_scaled_identity():
    x = torch.randn(10, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # n < d
    covariance, shrinkage = ledoit_wolf(x)
    assert 0 < shrinkage <= 1
    assert torch.linalg.eigvalsh(covariance).min() > 0  # invertible although the sample one is not
    big = torch.randn(20000, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert ledoit_wolf(big)[1] > 0.5  # isotropic: the scaled identity is the right answer
    big = big * torch.tensor([1.0, 2.0, 5.0, 10.0], dtype=torch.float64)
    assert ledoit_wolf(big)[1] < 0.05  # anisotropic, plenty of data: little shrinkage


def test_a_batch_of_token_sets_gives_each_sets_vector():
    generator = torch.Generator().manual_seed(4)
    for n, d in ((12, 5), (6, 10)):  # more tokens than dimensions, and fewer
        g = torch.randn(7, n, d, generator=generator, dtype=torch.float64) + torch.linspace(0, 2, d)
        for method in ("lda", "mean"):
            batch = estimate_vector(g, method)
            assert batch.shape == (7, d)
            for i in range(7):
                torch.testing.assert_close(batch[i], estimate_vector(g[i], method), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        estimate_vector(torch.randn(3, 1, 4, dtype=torch.float64))


def test_pinv_times_is_the_pseudo_inverse_for_definite_and_singular_matrices_in_one_batch():
    """The batch on which torch.linalg.lstsq's default CPU driver (gelsy, PyTorch 2.13) reports rank 0 for the
    singular matrix, from the pivots the definite one left behind, and returns zeros."""
    sigma = torch.zeros(2, 3, 3, dtype=torch.float64)
    sigma[0] = torch.eye(3)
    sigma[1] = torch.diag(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))  # singular, rank 2
    m = torch.ones(2, 3, dtype=torch.float64)
    expected = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(pinv_times(sigma, m), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(pinv_times(sigma[1], m[1]), expected[1], rtol=0, atol=1e-12)  # unbatched


_ONE_VECTOR = """
import hashlib, sys
import torch
junk = [torch.empty(int(sys.argv[1])) for _ in range(3)]  # a different heap in each process
from paperlab.geometry.estimate import estimate_vector
g = torch.randn(57, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
print(hashlib.sha256(estimate_vector(g).numpy().tobytes()).hexdigest())
"""


def test_an_estimated_vector_has_the_same_bits_in_every_process():
    """gelsy's uncleared pivots changed the last bits of this vector from process to process (and with
    them the geometry chapter's statistics, by up to 1e-13)."""
    digests = {subprocess.run([sys.executable, "-c", _ONE_VECTOR, str(size)], capture_output=True, text=True,
                              check=True).stdout for size in (1, 7, 100, 1001)}
    assert len(digests) == 1, digests


def test_training_projection_is_one_by_construction():
    g = torch.randn(40, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 2.0
    for method in ("lda", "mean"):
        assert abs(float(projection(g, estimate_vector(g, method)).mean()) - 1) < 1e-10
    with pytest.raises(ValueError, match="unknown method 'median'"):
        estimate_vector(g, "median")


def test_estimator_recovers_planted_structure_and_none_in_shuffled_data(hierarchy):
    config = dataclasses.replace(E.EXPERIMENT.config("fast"), n_random_pairs=60)
    corpus = HierarchyCorpus(config.lm.corpus, hierarchy)
    result = E.planted_statistics(config)
    summary = result["summary"]
    assert summary["whitened"]["true_mean_abs"] < 0.1  # cos(l_parent, l_child - l_parent) near 0
    assert summary["whitened"]["random_mean"] < -0.4  # ... unlike random pairs of concepts
    assert summary["whitened"]["held_out_mean"] > 0.8  # vectors generalise to held-out tokens
    assert abs(summary["shuffled"]["held_out_mean"]) < 0.2  # shuffled rows: nothing to generalise
    assert result["invariance_error"] < 1e-8  # whitening undoes the distortion M exactly
    # the parent without the child's tokens is a sibling set: the theorem predicts a negative cosine,
    # below what random splits of the parent give
    assert summary["whitened"]["disjoint_mean"] < -0.1
    assert summary["whitened"]["disjoint_mean"] < sum(result["nulls"]["disjoint_mean"]) / config.n_null_draws
    assert len(result["nulls"]["true_mean_abs"]) == config.n_null_draws
    # the matched-norm shuffled control: same norms as the whitened vectors, other directions
    assert len(result["orthogonality"]["shuffled"]["true_pairs_matched"]) == result["n_pairs"]
    concepts = extract_concepts(hierarchy, corpus.lemmas, config.min_tokens)
    data = planted_unembeddings(concepts, corpus.lemmas, PlantedConfig(d=32, n_other=100))
    assert data["gamma"].shape == (len(corpus.lemmas) + 100, 32)


def test_random_siblings_match_the_real_ones_sizes_and_overlap():
    parent = list(range(100, 160))
    generator = torch.Generator().manual_seed(0)
    draws = [E._random_siblings(parent, 20, 15, shared, generator) for shared in (0, 4, 15) for _ in range(5)]
    for (a, b), shared in zip(draws, [0] * 5 + [4] * 5 + [15] * 5):
        assert (len(a), len(b), len(set(a) & set(b))) == (20, 15, shared)
        assert set(a) | set(b) <= set(parent)
    assert len({tuple(a) for a, _ in draws[:5]}) == 5  # fresh draws
    with pytest.raises(ValueError, match="do not fit"):
        E._random_siblings(parent, 40, 30, 5, generator)  # 65 distinct tokens in a parent of 60


def test_sibling_null_tells_structured_siblings_from_random_ones():
    """Siblings whose offsets from the parent are orthogonal to it (the theorem) have smaller
    |cos(l_parent, l_a - l_b)| than random subsets of the parent; random "siblings" do not."""
    d, n = 16, 30
    generator = torch.Generator().manual_seed(1)
    noise = lambda k: 0.3 * torch.randn(k, d, generator=generator, dtype=torch.float64)  # noqa: E731
    parent = torch.zeros(d, dtype=torch.float64)
    parent[0] = 3.0
    rows, sets, triples = [], {}, []
    for z in range(12):
        offsets = torch.zeros(2, d, dtype=torch.float64)
        offsets[0, 1 + z % 7], offsets[1, 8 + z % 7] = 2.0, 2.0  # orthogonal to the parent's direction
        start = len(rows)
        rows += list(parent + offsets[0] + noise(n)) + list(parent + offsets[1] + noise(n))
        a, b = list(range(start, start + n)), list(range(start + n, start + 2 * n))
        sets.update({f"z{z}": a + b, f"a{z}": a, f"b{z}": b})
        triples.append((f"z{z}", f"a{z}", f"b{z}"))
    g = torch.stack(rows)
    vectors = estimate_vectors(g, sets)
    true = sum(abs(c) for c in sibling_orthogonality(vectors, triples)) / len(triples)
    null = E._sibling_nulls(g, sets, triples, 20, torch.Generator().manual_seed(2))
    assert len(null) == 20
    assert true < min(null) - 0.02  # structured siblings beat every draw of their null
    # "siblings" that are random halves of the parent are no better than the null
    shuffled = torch.randperm(2 * n, generator=generator).tolist()
    random_sets = dict(sets)
    for z, a, b in triples:
        members = sets[z]
        random_sets[a] = sorted(members[i] for i in shuffled[:n])
        random_sets[b] = sorted(members[i] for i in shuffled[n:])
    random_vectors = estimate_vectors(g, random_sets)
    random_true = sum(abs(c) for c in sibling_orthogonality(random_vectors, triples)) / len(triples)
    assert min(null) - 0.05 < random_true < max(null) + 0.05


def test_held_out_projections_on_pure_noise_are_near_zero():
    g = torch.randn(2000, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sets = {"a": list(range(0, 200)), "b": list(range(200, 500))}
    result = held_out_projections(g, sets, seed=0)
    for stats in result.values():
        assert abs(stats["train"] - 1) < 1e-9
        assert abs(stats["held_out"]) < 0.5


# ---------------------------------------------------------------------------------- corpus and LM
def test_corpus_contexts_come_from_the_lemmas_ancestors(hierarchy):
    corpus = HierarchyCorpus(CorpusConfig(p_noise=0.0), hierarchy)
    sentences, pair = corpus.sample(300, torch.Generator().manual_seed(0))
    assert sentences.shape == (300, corpus.config.n_context + 2)
    assert corpus.vocab_size > 4 * 1024
    concept_of = {w: c for c, words in corpus.context_words.items() for w in words}
    for sentence in sentences[:50]:
        words = corpus.text(sentence).rstrip(".").split()
        lemma = words[-1]
        for context in words[:-1]:
            assert lemma in corpus.concepts.tokens[concept_of[context]]
    assert corpus.bayes_lemma_loss(sentences) < math.log(len(corpus.lemmas))


def test_lm_logits_and_intervention(monkeypatch, corpus):
    monkeypatch.setenv("PAPERLAB_CACHE_DISABLE", "1")
    model = make_model(LMConfig(d_model=16, n_heads=2), corpus)
    x = corpus.inputs(corpus.sample(4, torch.Generator().manual_seed(0))[0])
    assert torch.allclose(model(x)[:, -1], lemma_logits(model, x), atol=1e-5)
    config = dataclasses.replace(
        E.EXPERIMENT.config("fast"),
        n_contexts=16,
        lm=LMConfig(
            d_model=16, n_heads=2, eval_sentences=50, train=TrainConfig(steps=3, batch_size=8, lr=1e-3)
        ),
    )
    result = E.intervention(config)
    parent = torch.tensor(result["parent"])
    alphas = torch.tensor(result["alphas"])
    # the logit difference is linear in alpha, with the slope (l_p1 - l_p2) . (mean g(p1) - mean g(p2))
    assert torch.allclose(parent, parent[0] + result["parent_slope"] * alphas, atol=1e-3)
    assert abs(result["parent_slope"] - result["parent_slope_closed_form"]) < 1e-3
    assert abs(result["child_slope"] - result["child_slope_closed_form"]) < 1e-3
    assert result["parent_slope"] > 0


# ------------------------------------------------------------------------------ Hugging Face path
def test_single_token_lemmas_with_a_fake_tokenizer():
    class Tokenizer:
        vocab = {" dog": 5, "cat": 6}

        def encode(self, text, add_special_tokens=False):
            return [self.vocab[text]] if text in self.vocab else [1, 2]

    assert single_token_lemmas(Tokenizer(), ["dog", "cat", "aardvark"]) == {"cat": 6, "dog": 5}


def test_hugging_face_unembedding_with_a_tiny_random_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = ["[UNK]", "dog", "cat", "oak", "fish"]
    backend = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    )
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=len(words), n_embd=8, n_layer=1, n_head=2, n_positions=16)
    )
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    from paperlab.geometry.hf import load_unembedding

    gamma, vocabulary = load_unembedding(str(tmp_path), ["dog", "cat", "oak", "zebra"])
    assert gamma.shape == (len(words), 8)
    assert vocabulary == {"cat": 2, "dog": 1, "oak": 3}


def test_lm_training_is_reproducible():
    config = LMConfig(d_model=16, n_heads=2, eval_sentences=20, train=TrainConfig(steps=3, batch_size=8))
    first = train_lm(config)
    torch.randn(3)  # the global generator's state must not matter
    second = train_lm(config)
    assert all(torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])


def test_sibling_set_gives_the_negative_cosine_the_theorem_predicts():
    # l_P, and two children with offsets orthogonal to l_P and to each other: the child C and the rest
    # R = P \ C (a sibling of C). cos(l_R, l_C - l_R) = -||d_R||^2 / (||l_R|| ||d_C - d_R||) < 0.
    l_parent = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    d_child = torch.tensor([0.0, 1.5, 0.0], dtype=torch.float64)
    d_rest = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    l_child, l_rest = l_parent + d_child, l_parent + d_rest
    predicted = -d_rest.norm() ** 2 / (l_rest.norm() * (d_child - d_rest).norm())
    assert abs(cosine(l_rest, l_child - l_rest) - float(predicted)) < 1e-12
    assert cosine(l_rest, l_child - l_rest) < -0.2
    assert abs(cosine(l_parent, l_child - l_parent)) < 1e-12  # the parent-child statistic itself is 0


def test_zipf_frequencies_skew_the_lemma_prior(hierarchy):
    uniform = HierarchyCorpus(CorpusConfig(), hierarchy)
    skewed = HierarchyCorpus(CorpusConfig(zipf=1.0), hierarchy)
    lemma_mass = lambda corpus: torch.zeros(corpus.vocab_size, dtype=torch.float64).index_add_(  # noqa: E731
        0, corpus.pair_lemma, corpus.pair_prior)[corpus.lemma_ids]
    assert torch.allclose(lemma_mass(uniform), torch.full((len(uniform.lemmas),), 1 / len(uniform.lemmas),
                                                          dtype=torch.float64))
    mass = lemma_mass(skewed).sort(descending=True).values
    assert math.isclose(float(mass[0] / mass[1]), 2.0, rel_tol=1e-9)  # rank^-1: the top word twice the second
    with pytest.raises(ValueError, match="zipf"):
        CorpusConfig(zipf=-1.0)


# ------------------------------------------------------------------------- seeds and the middle layer
def test_config_needs_two_blocks_and_distinct_seeds():
    with pytest.raises(ValueError, match="n_layers >= 2"):
        E.GeometryConfig(lm=LMConfig(n_layers=1))
    for seeds in ((0,), (1, 1, 2), (0, -1), [0, 1]):
        with pytest.raises(ValueError, match="seeds"):
            E.GeometryConfig(seeds=seeds)
    assert len(E.EXPERIMENT.config("full").seeds) >= 3


def test_for_seed_reseeds_both_lms_and_the_analysis():
    config = E.EXPERIMENT.config("fast")
    assert E.for_seed(config, 0) == config  # the defaults are seed 0 throughout
    other = E.for_seed(config, 7)
    assert (other.seed, other.lm.train.seed, other.zipf_lm.train.seed) == (7, 7, 7)
    assert dataclasses.replace(other, seed=0, lm=config.lm, zipf_lm=config.zipf_lm) == config


def _tiny_intervention_config():
    return dataclasses.replace(E.EXPERIMENT.config("fast"), n_contexts=16, n_control_directions=3,
                               lm=LMConfig(d_model=16, n_heads=2, eval_sentences=20,
                                           train=TrainConfig(steps=3, batch_size=8)))


def test_middle_layer_intervention_is_the_translated_vector_through_the_rest_of_the_model(corpus):
    config = _tiny_intervention_config()
    torch.manual_seed(0)
    model = make_model(config.lm, corpus).eval()
    with torch.no_grad():
        result = E._intervention(model, corpus, config)
        assert result["middle_layer"] == 1
        # by hand: the residual stream after block 1, the step rms(h_L) d / w at the last position, block 2,
        # the final norm and the head; with block 2's residual outputs zeroed h_L is h_1, so the step is the
        # vector that moves lambda by alpha d to first order, and the logits follow the RMSNorm exactly
        for block in model.blocks[1:]:
            block.attention.out.weight.zero_()
            block.mlp.down.weight.zero_()
        zeroed = E._intervention(model, corpus, config)
        x = corpus.inputs(corpus.sample(config.n_contexts, torch.Generator().manual_seed(config.seed + 1))[0])
        _, hidden = model(x, return_hidden=True)
        h = hidden[1][:, -1]
        gamma, vocabulary = E.lm_unembedding(model, corpus)
        whitening = Whitening(gamma)
        g = whitening(gamma)
        concepts = extract_concepts(corpus.hierarchy, vocabulary, config.min_tokens, config.lm.corpus.roots)
        sets = {c: torch.tensor([vocabulary[t] for t in concepts.tokens[c]]) for c in config.parent_pair}
        p1, p2 = config.parent_pair
        concept = estimate_vector(g[sets[p1]]) - estimate_vector(g[sets[p2]])
        d = whitening.to_embedding_direction(concept).float()
        norm = model.final_norm
        rms = (h.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        alpha = config.alphas[-1]
        logits = norm(h + alpha * rms * d / norm.weight) @ model.lm_head.weight[corpus.lemma_ids].T
        expected = float((logits[:, sets[p1]].mean(1) - logits[:, sets[p2]].mean(1)).mean())
    assert zeroed["middle"]["parent"][-1] == pytest.approx(expected, abs=1e-4)
    # the final layer is linear in alpha, the middle layer is not (the norm saturates)
    for curve, linear in ((result, True), (result["middle"], False)):
        values, alphas = torch.tensor(curve["parent"]), torch.tensor(result["alphas"])
        straight = values[0] + (values[-1] - values[0]) * (alphas - alphas[0]) / (alphas[-1] - alphas[0])
        assert ((values - straight).abs().max() < 1e-3) == linear
    for where in ("final", "middle"):
        assert len(result["control"][where]["parent_slopes"]) == config.n_control_directions


def test_seed_effects_are_each_row_against_its_null(monkeypatch):
    monkeypatch.setenv("PAPERLAB_CACHE_DISABLE", "1")
    config = _tiny_intervention_config()
    replicate = E._seed_job("lm", 0, config)
    replicate.update(E._seed_job("zipf", 0, config))
    effects = E.seed_effects(replicate)
    a = replicate["analysis"]
    w, sh = a["summary"]["whitened"], a["summary"]["shuffled"]
    assert effects["subsets"] == pytest.approx(w["true_mean_abs"] - sum(a["nulls"]["true_mean_abs"])
                                               / len(a["nulls"]["true_mean_abs"]))
    assert set(effects) == {"held_out", "subsets", "siblings", "rest", "euclidean", "euclidean_zipf",
                            "simplex", "heatmap", "steering", "steering_middle", "control", "control_middle"}
    sibling_null = a["nulls"]["siblings_mean_abs"]
    assert len(sibling_null) == config.n_null_draws
    assert effects["siblings"] == pytest.approx(w["siblings_mean_abs"]
                                                - sum(sibling_null) / len(sibling_null))
    assert effects["held_out"] == pytest.approx(w["held_out_mean"] - sh["held_out_mean"])
    iv = replicate["intervention"]
    middle = iv["middle"]
    assert effects["steering_middle"] == pytest.approx(middle["child_slope"] / middle["parent_slope"])
    random_final = sum(abs(s) for s in iv["control"]["final"]["parent_slopes"]) / config.n_control_directions
    assert effects["control"] == pytest.approx(iv["parent_slope"] - random_final)
    assert all(math.isfinite(v) for v in effects.values())
