"""The seeded synthetic world: jaxrec's embedded default dataset (specs/synthetic.md).

Every command must run offline on a fresh machine, and every method is later judged on
this data, so the generator plants the structure each paper exploits and keeps the truth:

* SQN/SAC, SNQN/SA2C, PRL (Xin et al., SIGIR 2020, WSDM 2022, SIGIR 2022) and SMORL
  (Stamenkovic et al., WSDM 2022) — sessions of clicks and purchases whose order matters,
  with the statistics of their datasets (specs/rl.md §1.5, §7).
* Latent intent (Chang et al., WWW 2023 Companion, arXiv 2211.09832) — per-event latent
  intents that show up in behaviour signals (specs/intent_pcrec.md §1.2, §1.4).
* IISAN / IISAN-Versa (Fu et al., SIGIR 2024; arXiv 2411.02992) — item titles and small
  images that each carry part of an item's identity (specs/iisan.md §1.13, §2.8).
* PERSOMA (Hebert et al., arXiv 2408.00960) — multi-label genres and per-user genre
  preferences, optionally ratings that follow them (specs/llm.md §1.1, §1.5).

Generative process
------------------
The *item world* (``build_world``) depends only on the item-side config fields and an
independent random stream, so changing ``num_sessions`` keeps the catalogue identical.

1. Items are split into ``C`` categories x ``S`` sub-styles ("groups"; at least two items
   per group). Category mass follows a Zipf law of exponent ``category_zipf_exponent`` and
   within a category items get Zipf weights ``rank**-zipf_exponent`` over a random ranking,
   the long-tail catalogue skew of e-commerce click logs (SMORL's novelty reward and
   coverage metrics need it). Item ids are a random permutation, so ids leak nothing.
2. Each item has ``neighbours_per_item`` *related items* in its own group, drawn by
   popularity without replacement: a sparse, asymmetric item-to-item transition table.
   Categories are linked by a transition matrix with zero diagonal whose rows are
   Dirichlet(0.3)-peaked, so "which category comes after this one" is learnable.
3. Genres: each category has 2 core genres, each sub-style one more; an item carries each
   of them with high probability plus an occasional random genre (multi-label).
4. Titles are drawn from a category vocabulary (10 pseudo-words), a sub-style vocabulary
   (3 words), shared English words and a global noise vocabulary, with a 15 % chance that
   the second category word comes from another category. Images ``[S_px, S_px, 3]`` uint8
   have a background colour that encodes the category (points of an RGB lattice) and a
   shape (disc, square, bars, plus, diamond, ring, triangle) that encodes the sub-style.
   So text and image each carry part of the identity and a cold item can be placed from
   its content.

Each *session* (``generate``) is one user visit:

5. A user has 2–3 preferred genres (hidden truth ``user_genres``); category and sub-style
   preferences are ``mass * exp(2 * genre overlap)``, so the history reveals the genres
   (on ``small()`` the k most frequent genres of a session's items recover 51 % of the
   user's k genres, against 32 % for the globally most frequent ones).
6. Session length is a geometric law truncated to ``[min_len, max_len]`` whose mean is
   fitted to ``mean_len``. Defaults imitate the RL papers' datasets (specs/rl.md §1.5):
   RetailRocket has 1,233,949 events in 195,523 sessions (6.31 per session) and RC15
   1,154,911 in 200,000 (5.77); both drop sessions with <= 2 events, hence ``min_len = 3``.
7. Every event has a latent intent from a sticky Markov chain over
   continue / explore / repeat / buy (a configurable subset). The next item is
   - continue: a related item of the last item (p = ``neighbour_prob``), else a popularity
     draw in the last item's group (0.25), else in its category;
   - explore: a new category from the category transition row x user preference;
   - repeat: an earlier item of the session (not the last one);
   - buy: a related item (0.35), else a draw in the last group weighted by
     popularity x exp(buyability), i.e. the user settles on an item to buy.
8. Observable signals (``log.features``) depend on the intent: dwell time (log-normal,
   median 35/15/25/80 s for continue/explore/repeat/buy), entry point (home, search,
   category page, related-item link, history/cart), a repeat flag and a category switch
   flag. Timestamps advance by the dwell time plus a short think time, so they are
   strictly increasing within a session and also carry the signal.
9. Purchases: ``P(buy) = sigmoid(b0 + w_intent + 0.9 log1p(n) + 0.8 buyability +
   0.8 genre match)`` with ``w_intent`` = 0 / -0.7 / -0.4 / +2.2 where ``n`` counts earlier events of the session in the item's
   category (the affinity a user builds by dwelling on a category). ``b0`` is solved so
   that the expected purchase share equals ``purchase_rate`` — default 4.2 %, between
   RC15's 3.8 % (43,946 / 1,154,911) and RetailRocket's 4.6 % (57,269 / 1,233,949). As in
   RetailRocket (add-to-cart replaces a view), a purchase *is* the event, not an extra row.
10. Coverage pass: any catalogue item left unseen replaces one popularity-drawn event of
    its own group (an event whose item is unique in its session and whose successor does
    not depend on it), so every item occurs at least once whenever such events exist —
    true for both presets.

The split between what models may and may not read:

* ``log.features`` (observable, model input): ``dwell`` float32 s, ``entry_point`` int8
  (``ENTRY_POINTS``), ``repeat`` int8, ``category_switch`` int8.
* ``log.ground_truth`` (hidden, evaluation only): ``intent`` int8 (index into
  ``config.intents``), ``buy_prob`` float32, ``user_genres`` int8 [E, G] (the session's
  user's preferred genres, repeated on each event so session subsets keep it).
* ``log.items`` (observable content): ``titles``, ``genres`` (names), ``category``;
  ``extra['images']`` [N, S_px, S_px, 3] uint8, ``extra['descriptions']`` (list of str),
  ``extra['genre_multi_hot']`` [N, G] int8. Keys of ``extra`` starting with ``gt_`` are
  hidden truth: ``gt_substyle`` [N] int32, ``gt_popularity`` [N] float32 (item probability
  under a pure popularity draw), ``gt_buyability`` [N] float32, ``gt_neighbours`` [N, K].
* The rest of the transition model (category transition matrix, intent chain) is in the
  ``SyntheticWorld`` returned by ``build_world(config)``.

Measured on the presets (seed 0; HR@10 on a held-out 20 % of sessions, counting
predictors as in tests/data_layer/test_synthetic.py):

  preset   |    events | per session | purchases | top-10 % items' share | Markov | popularity | random
  small()  |    18,721 |        6.24 |    4.05 % |                  47 % |   0.57 |       0.19 |   0.02
  large()  | 1,260,815 |        6.30 |    4.19 % |                  66 % | >= 0.51 |     0.046 | 0.0005

(Markov = last-item -> next-item transition counts; on ``large()`` the value is a lower
bound that ignores the popularity fallback.)

``small()`` generates in about 0.1 s and ``large()`` in 4-10 s on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Optional

import numpy as np

from jaxrec.data.events import EventLog, ItemInfo

_logger = logging.getLogger(__name__)

# Behaviours a latent intent can have; ``SyntheticConfig.intents`` picks a subset.
INTENTS = ("continue", "explore", "repeat", "buy")
_CONTINUE, _EXPLORE, _REPEAT, _BUY = range(4)
ENTRY_POINTS = ("home", "search", "category", "related", "history")
FEATURE_NAMES = ("dwell", "entry_point", "repeat", "category_switch")
GROUND_TRUTH_NAMES = ("intent", "buy_prob", "user_genres")

# Sticky intent chain (rows: from, cols: to, order of INTENTS). Self-transitions dominate
# so intents form segments; after a buy users tend to explore something else.
_INTENT_TRANSITION = np.array([
    [0.62, 0.16, 0.10, 0.12],
    [0.45, 0.40, 0.05, 0.10],
    [0.45, 0.20, 0.20, 0.15],
    [0.30, 0.40, 0.05, 0.25],
])
_INTENT_INITIAL = np.array([0.55, 0.35, 0.0, 0.10])  # nothing to repeat at t = 0
# Observable behaviour per intent: median dwell (s) and entry-point distribution.
_DWELL_MEDIAN_S = np.array([35.0, 15.0, 25.0, 80.0])
_DWELL_SIGMA = 0.5
_ENTRY_BY_INTENT = np.array([
    [0.10, 0.10, 0.35, 0.40, 0.05],  # continue: category pages and related links
    [0.35, 0.40, 0.15, 0.05, 0.05],  # explore: home feed and search
    [0.05, 0.10, 0.05, 0.10, 0.70],  # repeat: history
    [0.05, 0.10, 0.15, 0.40, 0.30],  # buy: related links and cart
])
# Purchase logit terms (b0 is solved for the target rate).
_BUY_W_INTENT = np.array([0.0, -0.7, -0.4, 2.2])
_BUY_W_DWELL = 0.9      # x log1p(earlier events of the session in the item's category)
_BUY_W_ITEM = 0.8       # x item buyability ~ N(0, 1)
_BUY_W_GENRE = 0.8      # x share of the item's genres the user prefers
_BUY_PICK_KAPPA = 1.5   # buy intent: item weight popularity * exp(kappa * buyability)
_P_SAME_GROUP = 0.25    # continue: popularity draw in the last item's group
_P_BUY_NEIGHBOUR = 0.35
_BETA_CATEGORY = 2.0    # preference boost per preferred core genre of a category
_BETA_SUBSTYLE = 2.0    # preference boost when a sub-style's genre is preferred
_CATEGORY_WORDS, _SUBSTYLE_WORDS = 10, 3

_GENRE_NAMES = (
    "action", "comedy", "drama", "family", "fantasy", "horror", "mystery", "romance",
    "sci-fi", "sport", "travel", "music", "history", "nature", "kids", "classic", "indie",
    "documentary", "crime", "western", "animation", "war", "musical", "thriller")
_SHARED_WORDS = ("new", "classic", "deluxe", "mini", "pro", "set", "edition", "original",
                 "premium", "basic", "plus", "series")
_CONSONANTS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch",
               "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")

# Internal record of how each event's item was drawn (used by the coverage pass).
_SRC_POP, _SRC_NEIGHBOUR, _SRC_REPEAT = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and knobs of the synthetic world; ``small()`` is the default.

    Attributes:
      seed: non-negative int; the same config gives the same bytes.
      num_sessions: number of sessions (one user visit each).
      num_items: catalogue size N (>= 2 * num_categories * num_substyles).
      num_categories: C.
      num_substyles: sub-styles per category, S.
      num_genres: G multi-label genres (>= 3).
      genres_per_user: (min, max) number of preferred genres per user.
      min_len, max_len, mean_len: session length support and mean.
      purchase_rate: expected share of events that are purchases.
      zipf_exponent: within-category item popularity exponent.
      category_zipf_exponent: category popularity exponent.
      neighbour_prob: continue intent's probability of moving to a related item.
      neighbours_per_item: related items per item, K.
      intents: latent intents in use (subset of ``INTENTS``, must contain "continue").
      image_size: image side in pixels.
      with_ratings: also emit 1..5 ratings that follow the user-item genre match
        (PERSOMA's MovieLens-like setting); otherwise ``log.rating`` is None.
      start_timestamp, time_span_days: session start times are uniform in this window.
      name: dataset name.
    """

    seed: int = 0
    num_sessions: int = 3000
    num_items: int = 500
    num_categories: int = 8
    num_substyles: int = 4
    num_genres: int = 12
    genres_per_user: tuple = (2, 3)
    min_len: int = 3
    max_len: int = 30
    mean_len: float = 6.3
    purchase_rate: float = 0.042
    zipf_exponent: float = 1.0
    category_zipf_exponent: float = 0.6
    neighbour_prob: float = 0.55
    neighbours_per_item: int = 3
    intents: tuple = INTENTS
    image_size: int = 16
    with_ratings: bool = False
    start_timestamp: int = 1_430_000_000
    time_span_days: float = 138.0  # RetailRocket spans about 4.5 months
    name: str = "synthetic"

    @classmethod
    def small(cls, **overrides) -> "SyntheticConfig":
        """The default: 3,000 sessions, 500 items, ~19k events (sized for a ~1 min SASRec run)."""
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides) -> "SyntheticConfig":
        """Benchmark scale: 200k sessions, 20k items, ~1.26M events (RetailRocket-sized)."""
        base = dict(num_sessions=200_000, num_items=20_000, num_categories=50,
                    num_substyles=8, num_genres=20, max_len=50, name="synthetic-large")
        base.update(overrides)
        return cls(**base)

    def genre_names(self) -> tuple:
        """[G] genre names, readable words first, then ``genre24``, ``genre25``, ..."""
        extra = tuple(f"genre{k}" for k in range(len(_GENRE_NAMES), self.num_genres))
        return (_GENRE_NAMES + extra)[: self.num_genres]

    def validate(self) -> None:
        """Raises ValueError naming the offending field."""
        def bad(field, msg):
            raise ValueError(f"SyntheticConfig.{field}={getattr(self, field)!r}: {msg}")

        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            bad("seed", "expected a non-negative int")
        for f in ("num_sessions", "num_substyles", "neighbours_per_item", "min_len",
                  "image_size"):
            if int(getattr(self, f)) < 1:
                bad(f, "expected >= 1")
        if self.num_categories < 2:
            bad("num_categories", "expected >= 2 (explore moves to another category)")
        if self.num_items < 2 * self.num_categories * self.num_substyles:
            bad("num_items", f"expected >= 2 * num_categories * num_substyles = "
                f"{2 * self.num_categories * self.num_substyles} (two items per group)")
        if self.num_genres < 3:
            bad("num_genres", "expected >= 3 (2 core genres per category + 1 per sub-style)")
        lo, hi = self.genres_per_user
        if not 1 <= lo <= hi <= self.num_genres:
            bad("genres_per_user", f"expected 1 <= min <= max <= num_genres={self.num_genres}")
        if self.max_len < self.min_len:
            bad("max_len", f"expected >= min_len={self.min_len}")
        if self.min_len == self.max_len:
            if self.mean_len != self.min_len:
                bad("mean_len", "expected == min_len == max_len")
        elif not self.min_len < self.mean_len < self.max_len:
            bad("mean_len", f"expected strictly inside (min_len, max_len) = "
                f"({self.min_len}, {self.max_len})")
        if not 0.0 < self.purchase_rate < 1.0:
            bad("purchase_rate", "expected in (0, 1)")
        if self.zipf_exponent < 0 or self.category_zipf_exponent < 0:
            bad("zipf_exponent" if self.zipf_exponent < 0 else "category_zipf_exponent",
                "expected >= 0")
        if not 0.0 <= self.neighbour_prob <= 1.0 - _P_SAME_GROUP:
            bad("neighbour_prob", f"expected in [0, {1.0 - _P_SAME_GROUP}]")
        unknown = [i for i in self.intents if i not in INTENTS]
        if unknown or len(set(self.intents)) != len(self.intents) or \
                "continue" not in self.intents:
            bad("intents", f"expected distinct names from {INTENTS} including 'continue'")
        if self.time_span_days <= 0:
            bad("time_span_days", "expected > 0")


@dataclasses.dataclass
class SyntheticWorld:
    """The item world and transition model (hidden truth unless stated observable).

    Attributes (N items, C categories, S sub-styles, G genres, K related items, I intents):
      config: the generating config.
      category: [N] int32 category of each item (observable).
      substyle: [N] int32 sub-style within the category.
      group: [N] int32 ``category * S + substyle``.
      popularity: [N] float64 item probability under a pure popularity draw (sums to 1).
      within_group: [N] float64 item share of its group's popularity mass.
      buyability: [N] float64 item purchase propensity, N(0, 1).
      neighbours: [N, K] int32 related items (same group), most likely first.
      neighbour_weights: [K] float64 probability of picking each related item.
      category_mass: [C] float64 category popularity (sums to 1).
      category_transition: [C, C] float64 explore transition matrix, zero diagonal.
      group_mass: [C, S] float64 sub-style share of its category's popularity.
      core_genres: [C, 2] int32 core genres of each category.
      substyle_genre: [C, S] int32 the extra genre of each sub-style.
      item_genres: [N, G] int8 multi-hot genres (observable).
      genre_names: [G] genre names.
      intent_behaviour: [I] int32 index into ``INTENTS`` of each configured intent.
      intent_transition: [I, I] float64 intent chain; intent_initial: [I] float64.
      titles, descriptions: [N] str (observable).
      images: [N, P, P, 3] uint8 (observable).
      category_vocab: [C] tuples of words; substyle_vocab: [C][S] tuples of words.
    """

    config: SyntheticConfig
    category: np.ndarray
    substyle: np.ndarray
    group: np.ndarray
    popularity: np.ndarray
    within_group: np.ndarray
    buyability: np.ndarray
    neighbours: np.ndarray
    neighbour_weights: np.ndarray
    category_mass: np.ndarray
    category_transition: np.ndarray
    group_mass: np.ndarray
    core_genres: np.ndarray
    substyle_genre: np.ndarray
    item_genres: np.ndarray
    genre_names: tuple
    intent_behaviour: np.ndarray
    intent_transition: np.ndarray
    intent_initial: np.ndarray
    titles: list
    descriptions: list
    images: np.ndarray
    category_vocab: list
    substyle_vocab: list


# ----------------------------------------------------------------------------- helpers

def _categorical_rows(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Samples one index per row of unnormalised ``weights`` [n, K] with uniforms u [n]."""
    cdf = np.cumsum(weights, axis=1)
    idx = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)
    # u * total can round up to the total itself; keep the index in range.
    return np.minimum(idx, weights.shape[1] - 1)


def _truncated_geometric_q(lo: int, hi: int, mean: float) -> float:
    """q such that P(L = k) ~ q**(k - lo) on [lo, hi] has the requested mean (bisection)."""
    k = np.arange(hi - lo + 1, dtype=np.float64)

    def mean_of(q):
        lw = k * math.log(q)
        w = np.exp(lw - lw.max())  # normalised in log space: q may exceed 1
        return lo + float((k * w).sum() / w.sum())

    a, b = 1e-9, 1.0 - 1e-12
    if mean_of(b) < mean:  # the mean asked for needs an increasing pmf; q > 1 works too
        a, b = b, 1e3
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if mean_of(m) < mean else (a, m)
    return 0.5 * (a + b)


def _sample_lengths(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """[B] int32 session lengths on [min_len, max_len] with mean ``mean_len``."""
    if cfg.min_len == cfg.max_len:
        return np.full(cfg.num_sessions, cfg.min_len, np.int32)
    q = _truncated_geometric_q(cfg.min_len, cfg.max_len, cfg.mean_len)
    k = np.arange(cfg.max_len - cfg.min_len + 1, dtype=np.float64)
    lw = k * math.log(q)
    cdf = np.cumsum(np.exp(lw - lw.max()))
    cdf /= cdf[-1]
    idx = np.searchsorted(cdf, rng.random(cfg.num_sessions), side="right")
    return (cfg.min_len + np.minimum(idx, len(k) - 1)).astype(np.int32)


def _pseudo_words(rng: np.random.Generator, n: int, taken: set) -> list:
    """n distinct pronounceable 2-3 syllable words not in ``taken`` (updated in place)."""
    out = []
    while len(out) < n:
        m = 2 * (n - len(out)) + 16
        nsyl = rng.integers(2, 4, m)
        cons = rng.integers(0, len(_CONSONANTS), (m, 3))
        vows = rng.integers(0, len(_VOWELS), (m, 3))
        for j in range(m):
            w = "".join(_CONSONANTS[cons[j, s]] + _VOWELS[vows[j, s]] for s in range(nsyl[j]))
            if w not in taken:
                taken.add(w)
                out.append(w)
                if len(out) == n:
                    break
    return out


def _category_colours(rng: np.random.Generator, c: int) -> np.ndarray:
    """[C, 3] float background colours: distinct points of an RGB lattice in [40, 215]."""
    k = max(2, math.ceil(c ** (1.0 / 3.0) - 1e-9))
    levels = np.linspace(40.0, 215.0, k)
    lattice = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    return lattice[rng.permutation(len(lattice))[:c]]


def _shape_masks(shape: np.ndarray, cy, cx, r, size: int) -> np.ndarray:
    """[n, P, P] bool masks; ``shape`` [n] in 0..7, centres/radii [n] in pixels."""
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    r = r[:, None, None]
    ady, adx = np.abs(dy), np.abs(dx)
    dist = np.sqrt(dy * dy + dx * dx)
    masks = np.stack([
        dist <= r,                                                       # disc
        np.maximum(ady, adx) <= 0.85 * r,                                # square
        (ady <= 0.45 * r) & (adx <= 1.4 * r),                            # horizontal bar
        (adx <= 0.45 * r) & (ady <= 1.4 * r),                            # vertical bar
        ((ady <= 0.3 * r) & (adx <= 1.2 * r)) | ((adx <= 0.3 * r) & (ady <= 1.2 * r)),  # plus
        ady + adx <= 1.2 * r,                                            # diamond
        (dist >= 0.55 * r) & (dist <= 1.05 * r),                         # ring
        (dy >= -r) & (dy <= r) & (adx <= 0.5 * (dy + r)),                # triangle
    ], axis=1)  # [n, 8, P, P]
    return masks[np.arange(len(shape)), shape]


def _images(rng, cfg, category, substyle) -> np.ndarray:
    """[N, P, P, 3] uint8: background = category colour, shape = sub-style."""
    n, p = len(category), cfg.image_size
    bg = _category_colours(rng, cfg.num_categories)[category]           # [N, 3]
    bg = bg + rng.normal(0.0, 8.0, bg.shape)                             # per-item jitter
    # The complement keeps the shape visible on every background; sub-styles beyond the
    # 8 shapes switch to a dark shape colour so that (shape, colour) stays unique.
    fg = np.where(((substyle // 8) % 2 == 0)[:, None], 255.0 - bg, bg / 3.0)
    cy = p / 2 + rng.uniform(-p / 8, p / 8, n)
    cx = p / 2 + rng.uniform(-p / 8, p / 8, n)
    r = p * rng.uniform(0.22, 0.3, n)
    mask = _shape_masks(substyle % 8, cy, cx, r, p)[..., None]           # [N, P, P, 1]
    img = np.where(mask, fg[:, None, None, :], bg[:, None, None, :])
    img = img + rng.normal(0.0, 6.0, img.shape)                          # pixel noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------- the world

def build_world(config: Optional[SyntheticConfig] = None) -> SyntheticWorld:
    """Builds the item world of ``config`` (independent of the session-side fields).

    Uses ``np.random.default_rng([seed, 0])``; ``generate`` draws sessions from
    ``[seed, 1]``, so ``build_world(cfg)`` is exactly the world behind ``generate(cfg)``.
    """
    cfg = config or SyntheticConfig.small()
    cfg.validate()
    rng = np.random.default_rng([int(cfg.seed), 0])
    n, c, s, g = cfg.num_items, cfg.num_categories, cfg.num_substyles, cfg.num_genres
    k_nb = cfg.neighbours_per_item

    # 1. Groups: two items per group first (so every group can have related items), then
    # the rest by a Dirichlet share, so group sizes vary.
    share = rng.dirichlet(np.full(c * s, 5.0))
    rest = rng.choice(c * s, size=n - 2 * c * s, p=share)
    group_of_slot = np.concatenate([np.repeat(np.arange(c * s), 2), rest])
    group = group_of_slot[rng.permutation(n)].astype(np.int32)  # item id -> group
    category = (group // s).astype(np.int32)
    substyle = (group % s).astype(np.int32)

    # Popularity: Zipf over a random ranking inside each category, Zipf over categories.
    within_cat = np.empty(n)
    for ci in range(c):
        members = np.flatnonzero(category == ci)
        ranks = rng.permutation(len(members)) + 1.0
        w = ranks ** -cfg.zipf_exponent
        within_cat[members] = w / w.sum()
    category_mass = (rng.permutation(c) + 1.0) ** -cfg.category_zipf_exponent
    category_mass /= category_mass.sum()
    popularity = category_mass[category] * within_cat
    group_mass = np.bincount(group, weights=within_cat, minlength=c * s).reshape(c, s)
    within_group = within_cat / group_mass.reshape(-1)[group]
    buyability = rng.normal(0.0, 1.0, n)

    # 2. Related items: popularity-weighted sampling without replacement inside the group
    # (Gumbel top-k), so related items are asymmetric and skewed to popular ones.
    neighbours = np.empty((n, k_nb), np.int32)
    for gi in range(c * s):
        members = np.flatnonzero(group == gi)
        m = len(members)
        keys = np.log(within_group[members])[None, :] + rng.gumbel(size=(m, m))
        np.fill_diagonal(keys, -np.inf)  # never related to itself
        top = np.argsort(-keys, axis=1, kind="stable")[:, : min(k_nb, m - 1)]
        top = np.resize(top.T, (k_nb, m)).T if top.shape[1] < k_nb else top
        neighbours[members] = members[top]
    neighbour_weights = 0.6 ** np.arange(k_nb)
    neighbour_weights /= neighbour_weights.sum()

    trans = rng.dirichlet(np.full(c, 0.3), size=c) + 0.05 * category_mass[None, :]
    np.fill_diagonal(trans, 0.0)
    category_transition = trans / trans.sum(axis=1, keepdims=True)

    # 3. Genres.
    core_genres = np.stack([rng.choice(g, 2, replace=False) for _ in range(c)]).astype(np.int32)
    substyle_genre = np.empty((c, s), np.int32)
    for ci in range(c):
        others = np.setdiff1d(np.arange(g), core_genres[ci])
        substyle_genre[ci] = rng.choice(others, s, replace=len(others) < s)
    item_genres = np.zeros((n, g), np.int8)
    rows = np.arange(n)
    for j in range(2):
        item_genres[rows, core_genres[category, j]] |= (rng.random(n) < 0.85).astype(np.int8)
    item_genres[rows, substyle_genre[category, substyle]] |= (
        rng.random(n) < 0.8).astype(np.int8)
    noisy = rng.random(n) < 0.25
    item_genres[rows[noisy], rng.integers(0, g, n)[noisy]] = 1
    empty = item_genres.sum(axis=1) == 0
    item_genres[rows[empty], substyle_genre[category, substyle][empty]] = 1
    genre_names = cfg.genre_names()

    # 4. Text: category, sub-style, shared and noise vocabularies.
    taken = set(_SHARED_WORDS)
    words = _pseudo_words(rng, c * _CATEGORY_WORDS + c * s * _SUBSTYLE_WORDS + 10 * c, taken)
    category_vocab = [tuple(words[i * _CATEGORY_WORDS:(i + 1) * _CATEGORY_WORDS])
                      for i in range(c)]
    off = c * _CATEGORY_WORDS
    substyle_vocab = [[tuple(words[off + (ci * s + si) * _SUBSTYLE_WORDS:
                                   off + (ci * s + si + 1) * _SUBSTYLE_WORDS])
                       for si in range(s)] for ci in range(c)]
    noise_vocab = words[off + c * s * _SUBSTYLE_WORDS:]
    # All random choices are drawn as arrays first so the Python loop only assembles.
    u = rng.random((n, 6))
    cat_w1 = rng.integers(0, _CATEGORY_WORDS, n)
    cat_w2 = rng.integers(0, _CATEGORY_WORDS, n)
    other_cat = (category + rng.integers(1, max(c, 2), n)) % c
    sub_w = rng.integers(0, _SUBSTYLE_WORDS, n)
    shared_w = rng.integers(0, len(_SHARED_WORDS), n)
    noise_w = rng.integers(0, len(noise_vocab), n)
    code = rng.integers(10, 100, n)
    code_letter = rng.integers(0, 26, n)
    titles, descriptions = [], []
    for i in range(n):
        ci, si = category[i], substyle[i]
        t = []
        if u[i, 0] < 0.5:
            t.append(_SHARED_WORDS[shared_w[i]])
        if u[i, 1] < 0.6:
            t.append(substyle_vocab[ci][si][sub_w[i]])
        t.append(category_vocab[ci][cat_w1[i]])
        if u[i, 2] < 0.5:  # second category word, 15 % from another category (noise)
            src = other_cat[i] if (u[i, 3] < 0.15 and c > 1) else ci
            t.append(category_vocab[src][cat_w2[i]])
        if u[i, 4] < 0.35:
            t.append(noise_vocab[noise_w[i]])
        if u[i, 5] < 0.3:
            t.append(f"{chr(97 + code_letter[i])}{code[i]}")
        titles.append(" ".join(t))
        gnames = [genre_names[j] for j in np.flatnonzero(item_genres[i])]
        glist = gnames[0] if len(gnames) == 1 else ", ".join(gnames[:-1]) + " and " + gnames[-1]
        descriptions.append(f"{titles[-1]}: a {substyle_vocab[ci][si][0]} "
                            f"{category_vocab[ci][0]} item for fans of {glist}.")
    images = _images(rng, cfg, category, substyle)

    behaviour = np.array([INTENTS.index(i) for i in cfg.intents], np.int32)
    it = _INTENT_TRANSITION[np.ix_(behaviour, behaviour)]
    ii = _INTENT_INITIAL[behaviour]
    return SyntheticWorld(
        config=cfg, category=category, substyle=substyle, group=group,
        popularity=popularity, within_group=within_group, buyability=buyability,
        neighbours=neighbours, neighbour_weights=neighbour_weights,
        category_mass=category_mass, category_transition=category_transition,
        group_mass=group_mass, core_genres=core_genres, substyle_genre=substyle_genre,
        item_genres=item_genres, genre_names=genre_names, intent_behaviour=behaviour,
        intent_transition=it / it.sum(axis=1, keepdims=True), intent_initial=ii / ii.sum(),
        titles=titles, descriptions=descriptions, images=images,
        category_vocab=category_vocab, substyle_vocab=substyle_vocab)


class _GroupSampler:
    """Inverse-CDF sampling of an item inside a given group for many rows at once.

    Items are sorted by group; key = group + within-group CDF lies in (g, g + 1], so
    ``searchsorted(key, g + u)`` lands inside group g for u in [0, 1).
    """

    def __init__(self, group: np.ndarray, weight: np.ndarray):
        self.order = np.argsort(group, kind="stable")
        g, w = group[self.order], weight[self.order]
        csum = np.cumsum(w)
        start = np.searchsorted(g, g, side="left")
        end = np.searchsorted(g, g, side="right") - 1
        before = np.where(start > 0, csum[np.maximum(start - 1, 0)], 0.0)
        cdf = (csum - before) / (csum[end] - before)
        cdf[end == np.arange(len(g))] = 1.0  # exact upper edge of every group
        self.key = g + cdf

    def __call__(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        """groups [n] int, u [n] in [0, 1) -> [n] int32 item ids."""
        idx = np.searchsorted(self.key, groups + u, side="right")
        return self.order[np.minimum(idx, len(self.key) - 1)].astype(np.int32)


# ------------------------------------------------------------------------- the sessions

def generate(config: Optional[SyntheticConfig] = None) -> EventLog:
    """Generates the synthetic event log (see the module docstring for the process).

    Args:
      config: a ``SyntheticConfig``; ``SyntheticConfig.small()`` when None.
    Returns:
      An ``EventLog`` with E events sorted by (session, timestamp), N = ``num_items``
      catalogue items (``raw_item_ids = arange(N)``), observable per-event ``features``,
      hidden per-event ``ground_truth`` and item side information (titles, genres,
      category, ``extra`` images/descriptions and ``gt_*`` hidden item truth).
    """
    cfg = config or SyntheticConfig.small()
    t0 = time.perf_counter()
    world = build_world(cfg)
    _logger.info("synthetic: item world (%d items) built in %.1fs", cfg.num_items,
             time.perf_counter() - t0)
    rng = np.random.default_rng([int(cfg.seed), 1])
    b, m_len, n_items = cfg.num_sessions, cfg.max_len, cfg.num_items
    s_sub, n_genres = cfg.num_substyles, cfg.num_genres

    lengths = _sample_lengths(cfg, rng)

    # 5. Users: preferred genres by Gumbel top-k over genre frequency in the catalogue.
    lo, hi = cfg.genres_per_user
    genre_freq = world.item_genres.sum(axis=0) + 1.0
    keys = np.log(genre_freq)[None, :] + rng.gumbel(size=(b, n_genres))
    rank = np.argsort(np.argsort(-keys, axis=1, kind="stable"), axis=1, kind="stable")
    k_user = rng.integers(lo, hi + 1, b)
    user_genres = (rank < k_user[:, None]).astype(np.int8)                  # [B, G]
    core_hot = np.zeros((cfg.num_categories, n_genres), np.float32)
    np.put_along_axis(core_hot, world.core_genres, 1.0, axis=1)
    cat_pref = (world.category_mass[None, :] * np.exp(
        _BETA_CATEGORY * (user_genres.astype(np.float32) @ core_hot.T))).astype(np.float32)

    def substyle_pref(rows, cats):
        """[n, S] sub-style weights of users ``rows`` inside categories ``cats``."""
        liked = user_genres[rows[:, None], world.substyle_genre[cats]]        # [n, S]
        return world.group_mass[cats] * np.exp(_BETA_SUBSTYLE * liked)

    pop_draw = _GroupSampler(world.group, world.within_group)
    buy_draw = _GroupSampler(world.group, world.within_group *
                             np.exp(_BUY_PICK_KAPPA * world.buyability))
    intent_trans = world.intent_transition
    behaviour = world.intent_behaviour
    cont = int(np.flatnonzero(behaviour == _CONTINUE)[0])

    items = np.zeros((b, m_len), np.int32)
    intent = np.zeros((b, m_len), np.int8)       # index into cfg.intents
    source = np.zeros((b, m_len), np.int8)

    # t = 0: the entry item from the user's category and sub-style preferences.
    rows = np.arange(b)
    intent[:, 0] = _categorical_rows(np.broadcast_to(world.intent_initial, (b, len(behaviour))),
                                     rng.random(b))
    cats = _categorical_rows(cat_pref, rng.random(b))
    subs = _categorical_rows(substyle_pref(rows, cats), rng.random(b))
    items[:, 0] = pop_draw(cats * s_sub + subs, rng.random(b))

    # One vectorised step per position over the sessions still running (lengths drop
    # geometrically, so the total work is ~E rows, not B * max_len). Three uniforms per
    # row are always drawn so the random stream does not depend on the branch taken.
    for t in range(1, m_len):
        rows = np.flatnonzero(lengths > t)
        if rows.size == 0:
            break
        n = rows.size
        z = _categorical_rows(intent_trans[intent[rows, t - 1]], rng.random(n))
        if t < 2:  # nothing earlier than the last item to repeat yet
            z[behaviour[z] == _REPEAT] = cont
        beh = behaviour[z]
        last = items[rows, t - 1]
        u_branch, u_pick, u_item = rng.random(n), rng.random(n), rng.random(n)
        new = np.empty(n, np.int32)
        src = np.full(n, _SRC_POP, np.int8)

        # Related-item moves carry the item-to-item (first-order) structure.
        nb = ((beh == _CONTINUE) & (u_branch < cfg.neighbour_prob)) | (
            (beh == _BUY) & (u_branch < _P_BUY_NEIGHBOUR))
        j = _categorical_rows(np.broadcast_to(world.neighbour_weights, (int(nb.sum()),
                                              cfg.neighbours_per_item)), u_pick[nb])
        new[nb] = world.neighbours[last[nb], j]
        src[nb] = _SRC_NEIGHBOUR

        same_group = (beh == _CONTINUE) & ~nb & (u_branch < cfg.neighbour_prob + _P_SAME_GROUP)
        new[same_group] = pop_draw(world.group[last[same_group]], u_item[same_group])

        same_cat = (beh == _CONTINUE) & ~nb & ~same_group
        c_same = world.category[last[same_cat]]
        sub = _categorical_rows(substyle_pref(rows[same_cat], c_same), u_pick[same_cat])
        new[same_cat] = pop_draw(c_same * s_sub + sub, u_item[same_cat])

        # Explore: the category transition row (order) times the user's taste (genres).
        ex = beh == _EXPLORE
        w = world.category_transition[world.category[last[ex]]] * cat_pref[rows[ex]]
        c_new = _categorical_rows(w, u_branch[ex])
        sub = _categorical_rows(substyle_pref(rows[ex], c_new), u_pick[ex])
        new[ex] = pop_draw(c_new * s_sub + sub, u_item[ex])

        # Repeat: uniform over positions 0..t-2, i.e. never the item just seen.
        rep = beh == _REPEAT
        pos = np.minimum((u_pick[rep] * (t - 1)).astype(np.int64), t - 2)
        new[rep] = items[rows[rep], pos]
        src[rep] = _SRC_REPEAT

        buy = (beh == _BUY) & ~nb
        new[buy] = buy_draw(world.group[last[buy]], u_item[buy])

        items[rows, t] = new
        intent[rows, t] = z
        source[rows, t] = src

    mask = np.arange(m_len)[None, :] < lengths[:, None]
    session = np.repeat(np.arange(b, dtype=np.int32), lengths)
    item = items[mask]
    intent_e = intent[mask]
    source_e = source[mask]
    e = len(item)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    pos_in_session = np.arange(e) - bounds[session]

    item = _cover_catalogue(item, session, source_e, world, rng)

    # 8. Observable signals.
    beh_e = behaviour[intent_e]
    dwell = np.exp(np.log(_DWELL_MEDIAN_S[beh_e]) + _DWELL_SIGMA * rng.standard_normal(e))
    entry = _categorical_rows(_ENTRY_BY_INTENT[beh_e], rng.random(e)).astype(np.int8)
    cat_e = world.category[item]
    first = pos_in_session == 0
    prev_cat = np.concatenate([[-1], cat_e[:-1]])
    category_switch = (~first & (cat_e != prev_cat)).astype(np.int8)
    key = session.astype(np.int64) * n_items + item
    _, first_idx, inverse = np.unique(key, return_index=True, return_inverse=True)
    repeat = (first_idx[inverse] != np.arange(e)).astype(np.int8)
    # Timestamps: the gap after an event is its dwell plus a short think time.
    think = 1 + rng.geometric(0.2, e)
    gap = np.ceil(dwell).astype(np.int64) + think
    start = cfg.start_timestamp + rng.integers(0, int(cfg.time_span_days * 86400), b)
    csum = np.cumsum(gap)
    before = np.concatenate([[0], csum[:-1]])  # sum of gaps of all earlier events
    timestamp = start[session] + before - before[bounds[session]]

    # 9. Purchases.
    same_cat_before = _count_earlier(session.astype(np.int64) * cfg.num_categories + cat_e)
    genre_match = (world.item_genres[item] * user_genres[session]).sum(axis=1) / \
        world.item_genres[item].sum(axis=1)
    logit = (_BUY_W_INTENT[beh_e] + _BUY_W_DWELL * np.log1p(same_cat_before) +
             _BUY_W_ITEM * world.buyability[item] + _BUY_W_GENRE * genre_match)
    b0 = _solve_intercept(logit, cfg.purchase_rate)
    buy_prob = 1.0 / (1.0 + np.exp(-(b0 + logit)))
    is_buy = (rng.random(e) < buy_prob).astype(np.int8)

    rating = None
    if cfg.with_ratings:  # PERSOMA: ratings follow how well genres match (llm.md §1.4)
        rating = np.clip(np.rint(1.5 + 3.0 * genre_match + rng.normal(0.0, 0.7, e)),
                         1, 5).astype(np.float32)

    items_info = ItemInfo(
        titles=list(world.titles),
        genres=[[world.genre_names[j] for j in np.flatnonzero(r)] for r in world.item_genres],
        category=world.category.copy(),
        extra={
            "images": world.images,
            "descriptions": list(world.descriptions),
            "genre_multi_hot": world.item_genres,
            "gt_substyle": world.substyle.copy(),
            "gt_popularity": world.popularity.astype(np.float32),
            "gt_buyability": world.buyability.astype(np.float32),
            "gt_neighbours": world.neighbours,
        })
    out = EventLog(
        session=session, item=item, timestamp=timestamp.astype(np.int64), is_buy=is_buy,
        raw_session_ids=np.arange(b, dtype=np.int64),
        raw_item_ids=np.arange(n_items, dtype=np.int64), rating=rating, name=cfg.name,
        items=items_info,
        ground_truth={"intent": intent_e, "buy_prob": buy_prob.astype(np.float32),
                      "user_genres": user_genres[session]},
        features={"dwell": dwell.astype(np.float32), "entry_point": entry,
                  "repeat": repeat, "category_switch": category_switch})
    out.validate()
    _logger.info("synthetic: %d sessions, %d events, %.2f%% purchases in %.1fs", b, e,
             100.0 * is_buy.mean(), time.perf_counter() - t0)
    return out


def _count_earlier(key: np.ndarray) -> np.ndarray:
    """[E] number of earlier events (in array order) that share ``key`` [E]."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    run_start = np.searchsorted(k, k, side="left")
    out = np.empty(len(key), np.int64)
    out[order] = np.arange(len(key)) - run_start
    return out


def _solve_intercept(logit: np.ndarray, rate: float) -> float:
    """b0 with mean(sigmoid(b0 + logit)) == rate (monotone in b0, so bisection)."""
    a, b = -30.0, 30.0
    for _ in range(60):
        m = 0.5 * (a + b)
        if np.mean(1.0 / (1.0 + np.exp(-(m + logit)))) < rate:
            a = m
        else:
            b = m
    return 0.5 * (a + b)


def _cover_catalogue(item, session, source, world, rng) -> np.ndarray:
    """Makes every catalogue item occur once (step 10 of the module docstring).

    An unseen item replaces a popularity-drawn event of its own group whose item occurs
    once in its session (so no repeat copied it) and occurs elsewhere too (so it does not
    become unseen), and whose successor was not drawn from it as a related item. The
    category and group of the event are unchanged, so all signals stay consistent.
    Items that cannot be placed (tiny logs) stay unseen — cold items.
    Returns the new [E] item array.
    """
    n = len(world.group)
    counts = np.bincount(item, minlength=n)
    missing = np.flatnonzero(counts == 0)
    if missing.size == 0:
        return item
    item = item.copy()
    key = session.astype(np.int64) * n + item
    _, inv, per_key = np.unique(key, return_inverse=True, return_counts=True)
    nxt_same = np.concatenate([session[1:] == session[:-1], [False]])
    nxt_src = np.concatenate([source[1:], [_SRC_POP]])
    ok = (source == _SRC_POP) & (per_key[inv] == 1) & ~(nxt_same & (nxt_src == _SRC_NEIGHBOUR))
    cand = np.flatnonzero(ok)
    cand = cand[rng.permutation(len(cand))]
    cand_group = world.group[item[cand]]
    by_group = {}
    for gi in np.unique(world.group[missing]):
        by_group[gi] = list(cand[cand_group == gi])
    placed = 0
    for m in missing:
        pool = by_group[world.group[m]]
        while pool:
            ev = pool.pop()
            if counts[item[ev]] >= 2:
                counts[item[ev]] -= 1
                item[ev] = m
                counts[m] = 1
                placed += 1
                break
    if placed < missing.size:
        _logger.info("synthetic: %d of %d items stay unseen (cold)", missing.size - placed,
                 missing.size)
    return item


def statistics(log_: EventLog) -> dict:
    """Summary numbers that tie the log to the real datasets (one table row).

    Returns a dict with the ``EventLog.stats`` fields plus ``purchase_ratio``,
    ``mean_len``, ``min_len``, ``max_len`` and ``top10pct_share`` (share of events that go
    to the 10 % most frequent items).
    """
    st = log_.stats()
    lens = np.diff(log_.session_bounds())
    counts = np.sort(np.bincount(log_.item, minlength=log_.num_items))[::-1]
    top = max(1, int(round(0.1 * log_.num_items)))
    st.update(purchase_ratio=float(log_.is_buy.mean()), mean_len=float(lens.mean()),
              min_len=int(lens.min()), max_len=int(lens.max()),
              top10pct_share=float(counts[:top].sum() / counts.sum()))
    return st
