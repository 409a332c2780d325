"""The world and its biographies: names, values, templates, the exact text the model sees."""

import math

import numpy as np
import pytest
import torch

from tests.helpers import run_cli, small_world_config
from logstore.schema import ATTRIBUTES
from trainer.batches import Biographies, decode
from trainer.text import TEMPLATES, tokenize
from trainer.world import build_world, value_sets


@pytest.fixture(scope="module")
def config():
    return small_world_config()


@pytest.fixture(scope="module")
def world(config):
    return build_world(config.world, config.seed)


def reference_sentence(world, i, attribute, template):
    """The sentence written with plain string formatting, independently of the batch code."""
    text = TEMPLATES[attribute][template].format(name=world.full_name(i), value=world.fact(i, attribute))
    return " ".join(tokenize(text))


def test_full_names_are_unique_across_splits(world):
    names = {tuple(row) for row in world.names.tolist()}
    assert len(names) == world.n
    assert (world.split == "train").sum() == 300 and (world.split == "heldout").sum() == 50
    assert (world.split == "finetune").sum() == 20


def test_trained_individuals_do_not_change_when_others_are_added(world):
    bigger = small_world_config(n_heldout=80, n_finetune=60)
    other = build_world(bigger.world, bigger.seed)
    train = world.ids("train")
    for key in ("names", "values", "train_templates", "eval_templates", "rank"):
        np.testing.assert_array_equal(getattr(world, key)[train], getattr(other, key)[train], err_msg=key)
    assert world.vocab == other.vocab


def test_value_sets_have_the_configured_sizes_and_are_prefix_free(config):
    sets = value_sets(config.world, config.seed)
    w = config.world
    assert [len(sets[a]) for a in ("birth_city", "university", "major", "company")] == \
        [w.n_cities, w.n_universities, w.n_majors, w.n_companies]
    assert sets["birth_city"] == sets["current_city"]
    for values in sets.values():
        tokens = [tuple(tokenize(v)) for v in values]
        assert len(set(tokens)) == len(tokens)
        for t in tokens:
            assert not any(u != t and u[: len(t)] == t for u in tokens)


def test_paper_preset_has_the_studys_value_sets():
    from trainer.config import load_config
    from tests.helpers import ROOT

    config = load_config(ROOT / "configs" / "paper.toml")
    sets = value_sets(config.world, config.seed)
    assert len(sets["birth_city"]) == 800 and len(sets["university"]) == 200
    assert len(sets["major"]) == 100 and len(sets["company"]) == 500
    assert any(len(tokenize(c)) >= 2 for c in sets["birth_city"])  # multi-token values are normal


def test_baseline_is_the_entropy_of_the_value_distribution(config, world):
    w = config.world
    years = w.year_max - w.year_min + 1
    expected = {"birth_date": math.log(31) + math.log(12) + math.log(years), "birth_city": math.log(w.n_cities),
                "university": math.log(w.n_universities), "major": math.log(w.n_majors),
                "company": math.log(w.n_companies), "current_city": math.log(w.n_cities)}
    np.testing.assert_allclose(world.baseline, [expected[a] for a in ATTRIBUTES])


def test_chance_accuracy_is_the_no_knowledge_models_accuracy_by_the_probes_definition():
    """The model that knows the value distribution only, written out from counts: its next-token
    probabilities after each prefix of a value are the shares of the values that continue so.
    Each possible value scored with the probes' own ``correct``, weighted by its probability."""
    import itertools
    from collections import Counter, defaultdict

    from trainer.probes import fact_metrics_from_logits

    config = small_world_config(year_min=1995, year_max=1999)  # 1860 dates, each scored below
    world = build_world(config.world, config.seed)

    index = {t: i for i, t in enumerate(world.vocab)}
    sets = value_sets(config.world, config.seed)
    years = [str(y) for y in range(config.world.year_min, config.world.year_max + 1)]
    dates = itertools.product([str(d) for d in range(1, 32)], ("January", "February", "March", "April", "May", "June",
                              "July", "August", "September", "October", "November", "December"), years)
    for a, attribute in enumerate(ATTRIBUTES):
        values = [list(d) for d in dates] if attribute == "birth_date" else [tokenize(v) for v in sets[attribute]]
        values = [[index[t] for t in v] for v in values]  # equally probable: the values are drawn uniformly
        following = defaultdict(Counter)  # prefix -> next token -> values that continue so
        for v in values:
            for k in range(len(v)):
                following[tuple(v[:k])][v[k]] += 1
        longest = max(len(v) for v in values)
        counts = torch.zeros(len(values), 1, longest, len(world.vocab))
        targets = torch.zeros(len(values), 1, longest, dtype=torch.int64)
        valid = torch.zeros(len(values), 1, longest, dtype=torch.bool)
        for i, v in enumerate(values):
            for k, token in enumerate(v):
                nxt = following[tuple(v[:k])]
                counts[i, 0, k, list(nxt)] = torch.tensor(list(nxt.values()), dtype=torch.float32)
                targets[i, 0, k], valid[i, 0, k] = token, True
        correct = fact_metrics_from_logits(counts.log(), targets, valid).correct
        assert int(correct.sum()) / len(values) == pytest.approx(world.chance_accuracy[a], rel=1e-12), attribute
    assert world.chance_accuracy[ATTRIBUTES.index("birth_city")] == 1 / config.world.n_cities


def test_values_are_drawn_uniformly(world):
    # 370 individuals over 40 cities: a chi-square test of uniformity at a fixed seed.
    from scipy.stats import chisquare

    counts = np.bincount(world.values[:, ATTRIBUTES.index("birth_city")], minlength=40)
    assert chisquare(counts).pvalue > 0.001


def test_each_individual_has_disjoint_train_and_eval_templates(world, config):
    both = np.concatenate([world.train_templates, world.eval_templates], axis=-1)
    assert world.eval_templates.shape[-1] == config.world.n_eval_templates
    assert (np.sort(both, axis=-1) == np.arange(config.world.n_templates)).all()
    # Which templates are held out differs between individuals.
    assert len({tuple(r) for r in world.eval_templates[:, 0].tolist()}) > 10


def test_batches_write_exactly_the_templated_text(world):
    bios = Biographies(world)
    individuals = torch.arange(0, world.n, 7)
    generator = torch.Generator().manual_seed(3)
    templates, order = bios.random_layout(individuals, generator)
    batch = bios.assemble(individuals, templates, order)
    assert batch.tokens.shape == (len(individuals), world.seq_len)
    for b, i in enumerate(individuals.tolist()):
        sentences = [reference_sentence(world, i, ATTRIBUTES[a], int(templates[b, a])) for a in order[b].tolist()]
        assert decode(world, batch.tokens[b], mark=("", "")) == " ".join(["<bos>", *sentences])
        for a in range(len(ATTRIBUTES)):
            span = [p for p in batch.value_pos[b, a].tolist() if p >= 0]
            assert span == list(range(span[0], span[0] + world.value_len[i, a]))
            assert batch.tokens[b, span].tolist() == world.value_tokens[i, a, : len(span)].tolist()
            names = batch.name_pos[b, a].tolist()
            assert batch.tokens[b, names].tolist() == world.names[i].tolist()


def test_every_value_comes_after_its_name_and_an_attribute_cue(world):
    bios = Biographies(world)
    individuals = torch.arange(world.n)
    batch = bios.assemble(individuals, *bios.random_layout(individuals, torch.Generator().manual_seed(0)))
    assert (batch.value_pos[..., 0] > batch.name_pos[..., 2]).all()
    # The words before the value (name excluded) tell the attributes apart: no template prefix
    # of one attribute is also a template prefix of another.
    prefixes = {a: {tuple(tokenize(t.split("{value}")[0].replace("{name}", "X"))) for t in TEMPLATES[a]}
                for a in ATTRIBUTES}
    for a in ATTRIBUTES:
        for b in ATTRIBUTES:
            if a != b:
                assert not prefixes[a] & prefixes[b], (a, b)


def test_eval_templates_never_occur_in_training_biographies(world):
    bios = Biographies(world)
    generator = torch.Generator().manual_seed(1)
    ids = torch.arange(0, 300, 3)
    held = {(i, a): {reference_sentence(world, i, ATTRIBUTES[a], t) for t in world.eval_templates[i, a]}
            for i in ids.tolist() for a in range(len(ATTRIBUTES))}
    for _ in range(30):
        batch = bios.assemble(ids, *bios.random_layout(ids, generator))
        for b, i in enumerate(ids.tolist()):
            text = decode(world, batch.tokens[b], mark=("", "")).removeprefix("<bos> ")
            sentences = [s.strip() + " ." for s in text.split(" .") if s.strip()]
            assert len(sentences) == len(ATTRIBUTES)
            for a in range(len(ATTRIBUTES)):
                assert not held[i, a] & set(sentences)


def test_same_seed_same_batches(world):
    bios = Biographies(world)
    out = []
    for _ in range(2):
        g = torch.Generator().manual_seed(11)
        ids = torch.randint(world.n, (16,), generator=g)
        out.append(bios.assemble(ids, *bios.random_layout(ids, g)).tokens)
    assert torch.equal(out[0], out[1])
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(world.n, (16,), generator=g)
    assert not torch.equal(out[0], bios.assemble(ids, *bios.random_layout(ids, g)).tokens)


def test_eval_text_is_the_same_every_time(world):
    bios = Biographies(world)
    ids = torch.arange(world.n)
    first = bios.assemble(ids, *bios.eval_layout(ids, seed=0)).tokens
    back = ids.flip(0)
    again = bios.assemble(back, *bios.eval_layout(back, seed=0)).tokens
    assert torch.equal(first, again.flip(0))


def test_sample_command_prints_biographies_with_marked_values(tiny_path):
    bad = run_cli("sample", str(tiny_path), "-n", "0")
    assert bad.returncode == 2 and bad.stderr.strip() == "phasefit: error: -n 0: must be at least 1"
    bad = run_cli("sample", str(tiny_path), "--seed", str(2**64))
    assert bad.returncode == 2 and bad.stderr.strip() == f"phasefit: error: --seed {2**64}: must be between 0 and 2**63 - 1"
    proc = run_cli("sample", str(tiny_path), "-n", "3", check=True)
    blocks = proc.stdout.strip().split("\n\n")
    assert len(blocks) == 4  # header and three biographies
    for block in blocks[1:]:
        lines = block.splitlines()
        assert lines[0].startswith("# individual ") and lines[1].startswith("<bos> ")
        assert lines[1].count("[") == len(ATTRIBUTES)
        for fact_line in lines[2:]:
            attribute, value = fact_line.split(None, 1)
            assert attribute in ATTRIBUTES and f"[{value}]" in lines[1].replace("[ ", "[")
