"""Common-words extraction (CWE), as in RULER: a long numbered list of words, report the most frequent.

``num_common`` words appear ``common_freq`` times each, the others ``uncommon_freq`` times each, as
many of them as fill ``context_tokens``; the list is shuffled. RULER's defaults: 10 common words
x 30, uncommon x 3. Score: F1 between the set of list words the reply names and the common words
(RULER reports recall; F1 also charges a reply that names everything). ``verify``: F1 == 1.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from r3fast.tasks.base import Example
from r3fast.tasks.long_context import LongContextTask

__all__ = ["CWETask", "WORDS", "f1", "solve"]

WORDS = tuple(
    """
acorn admiral almond amber anchor antler apple apron arrow attic autumn avocado badge bagel bamboo
banjo barley barrel basket beacon beetle berry bishop blanket blender blossom bonnet bottle boulder
bracket bramble breeze brick bronze bucket buffalo button cabin cactus camel camera candle canoe
canvas canyon captain caramel carbon cargo carrot castle cattle cedar cellar cement chalk cheetah
cherry chestnut cider cinnamon circle clarinet cliff clover cobalt cobra coconut coffee comet
compass copper coral cotton cradle crane crayon cricket crocus crystal cupboard curtain cushion
dagger daisy denim desert dessert diamond dolphin donkey dragon drawer dune eagle easel elbow
elephant ember emerald engine fabric falcon feather fern ferret fiddle flannel flute fog forest
forge fossil fountain freckle galaxy garlic gazelle geyser ginger glacier goblet goose gopher
granite grape gravel guitar hammer harbor harvest hazel hedge helmet heron hinge hollow honey
horizon hornet iceberg igloo island ivory jacket jasmine jelly jungle kernel kettle kitten kiwi
koala lace ladder lagoon lantern leather lemon lemur lilac lizard llama lobster locket lotus lynx
magnet mango maple marble marsh meadow melon meteor minnow mirror mitten monkey moose mosaic moss
muffin nectar needle nickel noodle nutmeg oak oasis olive onion orbit orchid ostrich otter owl
oyster paddle palace pancake panther papaya parrot peach peanut pebble pelican penguin pepper piano
pickle pigeon pillow pine pirate planet plum pocket pollen poppy porch potato pretzel prism pumpkin
puzzle quartz quill quilt rabbit raccoon radish raisin raven reef rhubarb ribbon robin rocket saddle
saffron salmon sandal sapphire satin scarf scooter seal sequoia shadow shovel shrimp silver slate
sloth socket sparrow spider spiral sponge spruce squash squid statue stone stork sugar summit
sundial sunset swan tablet teapot thistle thunder ticket tiger timber toad tomato tongue topaz
tortoise tractor trumpet tuba tulip tunnel turkey turnip umbrella vanilla velvet violet vulture
waffle wagon wallet walnut walrus wasp whale wheat willow window winter wizard wren yak yogurt zebra
zipper
""".split()
)

_PREAMBLE = (
    "Below is a numbered list of words. Some words appear more often than others. "
    "Memorize the ones that appear most often.\n"
)
_QUESTION = (
    "What are the {k} most common words in the above list? Answer with the {k} words, separated by commas."
)
_TOKENS_PER_ENTRY = 6.0  # "123. word\n" through SmolLM2's tokenizer (digits are single tokens): 5.5–6.5
_WORD_RE = re.compile(r"[A-Za-z]+")


def f1(predicted: set[str], gold: set[str]) -> float:
    if not predicted or not gold:
        return 0.0
    hit = len(predicted & gold)
    return 0.0 if hit == 0 else 2 * hit / (len(predicted) + len(gold))


def solve(context: str, k: int) -> list[str]:
    """The ``k`` most frequent words of the numbered list in ``context`` (the generator's self-check)."""
    counts = Counter(re.findall(r"^\d+\. (\w+)$", context, flags=re.MULTILINE))
    return [w for w, _ in counts.most_common(k)]


class CWETask(LongContextTask):
    name = "cwe"
    metric = "f1"

    def __init__(
        self, context_tokens: int = 2048, num_common: int = 10, common_freq: int = 30, uncommon_freq: int = 3
    ) -> None:
        super().__init__()
        if not 1 <= num_common < len(WORDS):
            raise ValueError(f"num_common must be in [1, {len(WORDS) - 1}], got {num_common}")
        if not common_freq > uncommon_freq >= 1:
            raise ValueError(f"need common_freq > uncommon_freq >= 1, got {common_freq}, {uncommon_freq}")
        entries = int(context_tokens / _TOKENS_PER_ENTRY)
        if entries < num_common * common_freq:
            raise ValueError(
                f"context_tokens={context_tokens} holds ~{entries} entries, fewer than the "
                f"{num_common} x {common_freq} of the common words"
            )
        self.context_tokens = context_tokens
        self.num_common = num_common
        self.common_freq = common_freq
        self.uncommon_freq = uncommon_freq
        self.num_uncommon = min(
            len(WORDS) - num_common, (entries - num_common * common_freq) // uncommon_freq
        )

    def _generate(self, rng: random.Random) -> Example:
        words = rng.sample(WORDS, self.num_common + self.num_uncommon)
        common, uncommon = words[: self.num_common], words[self.num_common :]
        items = [w for w in common for _ in range(self.common_freq)]
        items += [w for w in uncommon for _ in range(self.uncommon_freq)]
        rng.shuffle(items)
        listing = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(items))
        return {
            "context": _PREAMBLE + listing,
            "question": _QUESTION.format(k=self.num_common),
            "answer": sorted(common),
            "vocabulary": sorted(words),
        }

    def _score(self, example: Example, completion: str) -> float:
        if not isinstance(completion, str):
            return 0.0
        vocabulary = {w.lower() for w in example["vocabulary"]}
        named = {w.lower() for w in _WORD_RE.findall(completion[:20_000])} & vocabulary
        return f1(named, {w.lower() for w in example["answer"]})
