"""The built-in fine-tuning corpus: Commonsense-170K-style questions generated from small tables.

Every example uses one of the LLM-Adapters instruction layouts (BoolQ true/false, PIQA solution1/2,
ARC/OBQA answer1-4, SIQA answer1-3, HellaSwag ending1-4, WinoGrande option1/2) and the output
"the correct answer is <label>". The facts are arithmetic, word spelling, everyday objects, simple
physics and science, feelings and nonsense-word syllogisms: no proper nouns, so no example can
mention a subject of an edit suite. Generation is deterministic (fixed seed, insertion-ordered tables);
bump BUILTIN_CORPUS_VERSION whenever the output changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence

BUILTIN_CORPUS_VERSION = "1"
_SEED = 20240611

Record = dict[str, str]

_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)

CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon", "kiwi"),
    "vegetable": ("carrot", "potato", "onion", "cabbage", "spinach", "lettuce", "pea", "radish", "celery", "leek"),
    "bird": ("sparrow", "eagle", "owl", "parrot", "pigeon", "crow", "duck", "swan", "robin", "penguin"),
    "fish": ("salmon", "trout", "tuna", "cod", "carp", "herring", "shark", "goldfish", "sardine", "eel"),
    "mammal": ("horse", "cow", "sheep", "goat", "rabbit", "mouse", "whale", "bear", "deer", "fox"),
    "insect": ("ant", "bee", "beetle", "butterfly", "mosquito", "ladybug", "grasshopper", "moth", "wasp", "flea"),
    "tool": ("hammer", "saw", "wrench", "screwdriver", "drill", "chisel", "shovel", "rake", "pliers", "axe"),
    "piece of furniture": (
        "chair",
        "table",
        "sofa",
        "bed",
        "desk",
        "wardrobe",
        "bookshelf",
        "stool",
        "bench",
        "dresser",
    ),
    "vehicle": ("bicycle", "bus", "truck", "tractor", "scooter", "train", "boat", "airplane", "van", "canoe"),
    "musical instrument": (
        "piano",
        "guitar",
        "violin",
        "drum",
        "flute",
        "trumpet",
        "harp",
        "cello",
        "clarinet",
        "banjo",
    ),
    "color": ("red", "blue", "green", "yellow", "purple", "orange", "brown", "pink", "gray", "white"),
    "shape": ("circle", "square", "triangle", "rectangle", "oval", "hexagon", "pentagon", "star", "diamond", "cube"),
    "piece of clothing": ("shirt", "sock", "jacket", "scarf", "glove", "sweater", "skirt", "coat", "boot", "hat"),
    "kitchen utensil": ("spoon", "fork", "ladle", "whisk", "spatula", "colander", "peeler", "grater", "kettle", "pan"),
}

# Each list runs from lightest (or smallest) to heaviest (or largest): any two entries compare clearly.
_BY_WEIGHT = (
    "feather",
    "leaf",
    "paper clip",
    "coin",
    "pencil",
    "egg",
    "book",
    "brick",
    "bicycle",
    "piano",
    "car",
    "elephant",
)
_BY_SIZE = (
    "grain of sand",
    "ant",
    "button",
    "marble",
    "tennis ball",
    "shoe",
    "chair",
    "door",
    "bus",
    "house",
    "mountain",
)

# Objects that fit inside a container, smallest first (for WinoGrande-style sentences).
_CONTAINMENT = ("coin", "key", "spoon", "book", "pillow", "suitcase", "wardrobe", "truck")

_TRUE_FACTS = (
    "does ice float on water",
    "does water boil when it is heated enough",
    "does ice melt in a warm room",
    "do plants need sunlight to grow",
    "does a magnet attract iron nails",
    "does sound travel through air",
    "do fish breathe with gills",
    "is steam a form of water",
    "does a ball roll down a slope",
    "do bees make honey",
    "does a candle give off heat",
    "is glass usually transparent",
    "do heavy objects fall when they are dropped",
    "does rubber stretch",
    "does wood burn in a fire",
    "do caterpillars turn into butterflies",
    "is a metal spoon a good conductor of heat",
    "do seeds grow into plants",
    "does salt dissolve in water",
    "is the ocean salty",
    "do birds lay eggs",
    "does a thermometer measure temperature",
    "does a compass needle point north",
    "is a whale a mammal",
    "does light travel faster than sound",
    "do leaves of many trees change color in autumn",
    "does exercise make the heart beat faster",
    "can a sponge soak up water",
    "does a shadow form when light is blocked",
    "is a triangle a shape with three sides",
    "does an umbrella keep rain off a person",
    "do spiders have eight legs",
    "does cold weather make water freeze",
    "does oil float on water",
    "is a square a shape with four equal sides",
    "do people need water to live",
    "does a clock measure time",
    "can wind turn the blades of a windmill",
)
_FALSE_FACTS = (
    "does a stone float on water",
    "does ice sink in water",
    "do plants grow best in total darkness",
    "does a magnet attract wooden blocks",
    "does sound travel through empty space",
    "do fish breathe with lungs like people",
    "is sand a liquid",
    "does a ball roll up a slope by itself",
    "do cows lay eggs",
    "does snow feel hot",
    "is a brick lighter than a feather",
    "does paper sink like a rock",
    "do insects have ten legs",
    "is a circle a shape with corners",
    "does water flow uphill on its own",
    "can a person breathe under water without help",
    "does a candle burn without oxygen",
    "is a spider an insect with six legs",
    "does glass bend like rubber",
    "is a whale a fish",
    "do seeds grow into rocks",
    "does sugar make food taste sour",
    "is the ocean made of fresh water",
    "does a thermometer measure weight",
    "do penguins fly long distances",
    "does metal melt in a glass of cold water",
    "is a triangle a shape with four sides",
    "does an umbrella keep a person dry by making rain",
    "does cold weather make water boil",
    "do people need sand to live",
    "does a shadow form where light shines freely",
    "can a rock soak up water like a sponge",
    "does a clock measure distance",
    "do trees walk from place to place",
    "is steam colder than ice",
    "does rain fall upward",
    "do snakes have legs",
    "is a mountain smaller than a marble",
)

# (goal, good solution, bad solution) in the PIQA style.
_PHYSICAL_GOALS = (
    ("How do you keep soup warm for longer?", "Put a lid on the pot.", "Put the soup in the freezer."),
    ("How do you dry wet clothes quickly?", "Hang them outside in a warm breeze.", "Fold them tightly in a drawer."),
    ("How do you cut a sheet of paper in half?", "Use scissors along a straight line.", "Use a spoon to tear it."),
    ("How do you keep bread fresh?", "Store it in a closed bag.", "Leave it open on a hot windowsill."),
    (
        "How do you stop a door from slamming in the wind?",
        "Put a door stop in front of it.",
        "Open all the windows wider.",
    ),
    ("How do you cool a hot drink quickly?", "Add a few ice cubes.", "Wrap it in a warm blanket."),
    ("How do you find a lost coin in the dark?", "Use a flashlight to look on the floor.", "Close your eyes and wait."),
    ("How do you loosen a tight jar lid?", "Run the lid under warm water and twist.", "Put the jar in the freezer."),
    ("How do you keep a plant healthy?", "Water it and give it sunlight.", "Keep it in a dark closet without water."),
    ("How do you carry water to the garden?", "Use a bucket or a watering can.", "Use a paper bag."),
    (
        "How do you remove a splinter from a finger?",
        "Use clean tweezers to pull it out.",
        "Hit the finger with a hammer.",
    ),
    ("How do you keep ice cream from melting?", "Keep it in the freezer.", "Leave it on a sunny table."),
    ("How do you make a room brighter at night?", "Turn on a lamp.", "Close the curtains."),
    ("How do you clean a muddy shoe?", "Brush off the mud and wipe it with water.", "Roll it in more mud."),
    ("How do you keep warm on a cold day?", "Wear a coat and a scarf.", "Wear wet clothes."),
    (
        "How do you stop a nosebleed?",
        "Lean forward and pinch the soft part of the nose.",
        "Lie down and tilt the head far back.",
    ),
    ("How do you soften hard butter?", "Leave it at room temperature for a while.", "Put it in the freezer."),
    ("How do you hang a picture on a wall?", "Use a nail and a hammer.", "Use a drop of water."),
    ("How do you measure the length of a table?", "Use a tape measure.", "Use a thermometer."),
    ("How do you boil an egg?", "Put it in a pot of boiling water.", "Put it in a glass of cold water."),
    (
        "How do you keep mosquitoes out of a bedroom?",
        "Close the window screens.",
        "Leave a bright light on by the open window.",
    ),
    ("How do you sharpen a pencil?", "Use a pencil sharpener.", "Dip it in water."),
    ("How do you wake up on time?", "Set an alarm clock.", "Stay up all night before."),
    ("How do you fix a flat bicycle tire?", "Patch the hole and pump air into the tire.", "Pour sand into the tire."),
    ("How do you see better in a dark cellar?", "Bring a flashlight.", "Wear sunglasses."),
    ("How do you keep milk from going bad?", "Keep it in the refrigerator.", "Keep it next to the oven."),
    ("How do you put out a small campfire?", "Pour water over it and stir the ashes.", "Add more dry wood."),
    ("How do you keep a letter from blowing away outside?", "Put a stone on top of it.", "Hold it up in the wind."),
    ("How do you make tea?", "Pour hot water over a tea bag.", "Pour cold sand over a tea bag."),
    ("How do you protect your eyes from strong sunlight?", "Wear sunglasses.", "Stare straight at the bright sky."),
)

# task -> the tool for it, for "To <task>, what should you use?"
_TASK_TOOLS = (
    ("drive a nail into wood", "a hammer"),
    ("cut a board in two", "a saw"),
    ("dig a hole in the garden", "a shovel"),
    ("sweep the floor", "a broom"),
    ("write a letter", "a pen"),
    ("see tiny cells", "a microscope"),
    ("see faraway stars", "a telescope"),
    ("measure how hot it is", "a thermometer"),
    ("weigh flour for a cake", "a kitchen scale"),
    ("tell the time", "a clock"),
    ("eat soup", "a spoon"),
    ("boil water", "a kettle"),
    ("unlock a door", "a key"),
    ("tighten a bolt", "a wrench"),
    ("stir pancake batter", "a whisk"),
    ("drain cooked pasta", "a colander"),
    ("brush your teeth", "a toothbrush"),
    ("comb tangled hair", "a comb"),
    ("draw a straight line", "a ruler"),
    ("find north", "a compass"),
    ("stay dry in the rain", "an umbrella"),
    ("light a dark room", "a lamp"),
    ("water the plants", "a watering can"),
    ("carry groceries", "a shopping bag"),
    ("cut paper shapes", "scissors"),
    ("rake fallen leaves", "a rake"),
    ("peel a potato", "a peeler"),
    ("grate cheese", "a grater"),
    ("chop firewood", "an axe"),
    ("turn a screw", "a screwdriver"),
)

# (feeling, situations that cause it) in the SIQA style; every situation is about "someone".
_FEELINGS = (
    (
        "happy",
        (
            "Someone got a surprise party from their friends.",
            "Someone won the game they practiced for.",
            "Someone received a kind letter from an old friend.",
            "Someone finally finished building a treehouse.",
        ),
    ),
    (
        "sad",
        (
            "Someone's pet goldfish died this morning.",
            "Someone lost the bracelet their grandmother gave them.",
            "Someone's best friend moved far away.",
            "Someone's favorite toy broke beyond repair.",
        ),
    ),
    (
        "worried",
        (
            "Someone could not find their keys before an important trip.",
            "Someone heard a strange noise downstairs at night.",
            "Someone's little brother did not come home at the usual time.",
            "Someone forgot to study for a test tomorrow.",
        ),
    ),
    (
        "tired",
        (
            "Someone ran a long race in the heat.",
            "Someone stayed awake all night to finish a project.",
            "Someone carried heavy boxes up the stairs all day.",
            "Someone walked home after a long shift.",
        ),
    ),
    (
        "grateful",
        (
            "Someone's neighbor fixed their broken fence for free.",
            "Someone's friend lent them money when they needed it.",
            "Someone's coworker covered their shift while they were sick.",
            "Someone's teacher stayed late to help them learn.",
        ),
    ),
    (
        "proud",
        (
            "Someone graduated at the top of the class.",
            "Someone painted a picture that won a prize.",
            "Someone learned to ride a bicycle after many tries.",
            "Someone built a chair with their own hands.",
        ),
    ),
    (
        "angry",
        (
            "Someone's sandwich was taken from the fridge at work.",
            "Someone waited an hour and the shop closed in their face.",
            "Someone's bicycle was damaged by a careless driver.",
            "Someone was blamed for a mistake they did not make.",
        ),
    ),
    (
        "scared",
        (
            "Someone saw a large dog running straight at them.",
            "Someone got lost in a dark forest.",
            "Someone heard thunder crash right above the house.",
            "Someone stood at the edge of a high cliff.",
        ),
    ),
)
_FEELING_QUESTIONS = ("How would someone feel afterwards?", "How would you describe someone after this?")

# (context, sensible ending) in the HellaSwag style.
_ACTIVITIES = (
    ("A man fills a bucket with soapy water and picks up a sponge. He", "washes the car from the roof down."),
    ("A woman puts flour, eggs and milk into a bowl. She", "whisks them together into a smooth batter."),
    ("A boy ties his shoes and stretches his legs at the start line. He", "runs down the track as fast as he can."),
    ("A girl sits at the piano and opens her music book. She", "plays a slow tune with both hands."),
    ("A gardener kneels by the flower bed with a small shovel. He", "digs holes and plants the seedlings."),
    ("A person spreads a towel on the sand and opens an umbrella. They", "lie down in the shade and read a book."),
    ("A chef places a pan on the stove and adds oil. He", "cracks two eggs into the hot pan."),
    ("A woman holds a paintbrush in front of an easel. She", "paints a blue sky across the top of the canvas."),
    ("A man climbs a ladder with a new light bulb. He", "unscrews the old bulb and puts in the new one."),
    ("A child holds a kite on a windy hill. The child", "lets the string out as the kite rises."),
    ("A woman pours hot water into a teapot. She", "waits a few minutes and pours the tea into cups."),
    ("A man puts on goggles and stands at the edge of the pool. He", "dives in and swims to the other side."),
    ("A person picks up a broom in a dusty kitchen. They", "sweep the crumbs into a dustpan."),
    ("A boy opens his notebook and picks up a pencil. He", "writes the answers to his homework."),
    ("A woman lays a shirt flat on the ironing board. She", "presses the iron over the wrinkles."),
    ("A man kneels beside a bicycle with a flat tire. He", "patches the tube and pumps it up."),
    ("A girl puts on skates at the edge of the frozen pond. She", "glides slowly across the ice."),
    ("A baker shapes the dough into loaves. He", "puts the loaves into the hot oven."),
    ("A woman wraps a present in colored paper. She", "ties a ribbon around the box."),
    ("A man sets up a tent at the campsite. He", "pushes the stakes into the ground."),
    ("A person stands at the sink with a stack of dirty plates. They", "scrub each plate and rinse it."),
    ("A boy holds a fishing rod on the dock. He", "casts the line into the water and waits."),
    ("A woman sets a ladder against the tall hedge in her yard. She", "trims the top of the hedge with shears."),
    ("A man holds a dog's leash at the door. He", "takes the dog for a walk around the block."),
)

_OPPOSITES = (
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("wet", "dry"),
    ("full", "empty"),
    ("open", "closed"),
    ("early", "late"),
    ("loud", "quiet"),
    ("hard", "easy"),
    ("high", "low"),
    ("long", "short"),
    ("thick", "thin"),
    ("young", "old"),
    ("clean", "dirty"),
    ("bright", "dark"),
    ("rough", "smooth"),
    ("strong", "weak"),
    ("sweet", "sour"),
    ("deep", "shallow"),
    ("wide", "narrow"),
    ("rich", "poor"),
    ("happy", "sad"),
    ("above", "below"),
    ("push", "pull"),
    ("win", "lose"),
    ("buy", "sell"),
    ("first", "last"),
    ("near", "far"),
    ("inside", "outside"),
)

_SYLLABLES = (
    "bla",
    "dro",
    "fep",
    "gli",
    "kro",
    "lum",
    "mip",
    "nox",
    "pra",
    "quo",
    "rin",
    "sef",
    "tuv",
    "vel",
    "wib",
    "zar",
)


def builtin_corpus_records() -> list[Record]:
    """All built-in examples as {instruction, output, answer} records, in a fixed shuffled order."""
    rng = random.Random(_SEED)
    seen: set[str] = set()
    records: list[Record] = []
    for family in _FAMILIES:
        for record in family(rng):
            if record["instruction"] not in seen:
                seen.add(record["instruction"])
                records.append(record)
    rng.shuffle(records)
    return records


def _record(instruction: str, answer: str) -> Record:
    return {"instruction": instruction, "output": f"the correct answer is {answer}", "answer": answer}


def _boolq(question: str, truth: bool) -> Record:
    return _record(
        f"Please answer the following question with true or false, question: {question}?\n\nAnswer format: true/false",
        "true" if truth else "false",
    )


def _choices(
    question: str,
    correct: str,
    wrong: Sequence[str],
    rng: random.Random,
    *,
    kind: str = "answer",
    lead: str = "Please choose the correct answer to the question:",
) -> Record:
    """A multiple-choice record with the correct option at a random position (`kind`: answer/ending)."""
    options = [correct, *wrong]
    rng.shuffle(options)
    label = kind.capitalize()
    listed = " ".join(f"{label}{i}: {opt}" for i, opt in enumerate(options, 1))
    formats = "/".join(f"{kind}{i}" for i in range(1, len(options) + 1))
    return _record(f"{lead} {question}\n\n{listed}\n\nAnswer format: {formats}", f"{kind}{options.index(correct) + 1}")


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _arithmetic_truths(rng: random.Random) -> Iterator[Record]:
    for a in range(2, 21):
        for b in range(2, 21):
            if rng.random() < 0.35:
                total = a + b if rng.random() < 0.5 else a + b + rng.choice((-2, -1, 1, 2))
                yield _boolq(f"is {a} plus {b} equal to {total}", total == a + b)
            if rng.random() < 0.25 and a != b:
                yield _boolq(f"is {a} greater than {b}", a > b)
            if rng.random() < 0.15 and a <= 10 and b <= 10:
                product = a * b if rng.random() < 0.5 else a * b + rng.choice((-a, a, -1, 1))
                yield _boolq(f"is {a} times {b} equal to {product}", product == a * b)
    for n in range(1, 60):
        yield _boolq(f"is {n} an even number", n % 2 == 0)
    for n, word in enumerate(_NUMBER_WORDS):
        if n >= 1:
            yield _boolq(f"does the word {word} name a number bigger than {n - 1}", True)
            yield _boolq(f"does the word {word} name a number smaller than {n}", False)


def _category_truths(rng: random.Random) -> Iterator[Record]:
    names = list(CATEGORIES)
    for category, items in CATEGORIES.items():
        for item in items:
            thing = item if category == "color" else _article(item)
            yield _boolq(f"is {thing} a kind of {category}", True)
            other = rng.choice([c for c in names if c != category])
            yield _boolq(f"is {thing} a kind of {other}", False)


def _word_truths(rng: random.Random) -> Iterator[Record]:
    words = sorted({w for items in CATEGORIES.values() for w in items if " " not in w})
    letters = "abcdefghijklmnopqrstuvwxyz"
    for word in words:
        letter = word[0] if rng.random() < 0.5 else rng.choice(letters.replace(word[0], ""))
        yield _boolq(f'does the word "{word}" start with the letter {letter}', letter == word[0])
        count = len(word) if rng.random() < 0.5 else len(word) + rng.choice((-1, 1))
        yield _boolq(f'does the word "{word}" have {count} letters', count == len(word))


def _physics_truths(rng: random.Random) -> Iterator[Record]:
    for fact in _TRUE_FACTS:
        yield _boolq(fact, True)
    for fact in _FALSE_FACTS:
        yield _boolq(fact, False)
    for ordered, adjective in ((_BY_WEIGHT, "heavier"), (_BY_SIZE, "bigger")):
        for i, small in enumerate(ordered):
            for big in ordered[i + 1 :]:
                if rng.random() < 0.5:
                    yield _boolq(f"is {_article(big)} {adjective} than {_article(small)}", True)
                else:
                    yield _boolq(f"is {_article(small)} {adjective} than {_article(big)}", False)


def _syllogisms(rng: random.Random) -> Iterator[Record]:
    def word() -> str:
        return "".join(rng.sample(_SYLLABLES, 2))

    for _ in range(160):
        a, b, c = word(), word(), word()
        if len({a, b, c}) < 3:
            continue
        form = rng.randrange(4)
        if form == 0:
            yield _boolq(f"if all {a}s are {b}s and all {b}s are {c}s, are all {a}s {c}s", True)
        elif form == 1:
            yield _boolq(f"if all {a}s are {b}s, must all {b}s be {a}s", False)
        elif form == 2:
            yield _boolq(f"if no {a} is a {b} and this thing is a {a}, is this thing a {b}", False)
        else:
            yield _boolq(f"if every {a} is a {b} and this thing is a {a}, is this thing a {b}", True)


def _physical_solutions(rng: random.Random) -> Iterator[Record]:
    def piqa(goal: str, good: str, bad: str) -> Record:
        first, second = (good, bad) if rng.random() < 0.5 else (bad, good)
        return _record(
            f"Please choose the correct solution to the question: {goal}\n\nSolution1: {first}\n\n"
            f"Solution2: {second}\n\nAnswer format: solution1/solution2",
            "solution1" if first == good else "solution2",
        )

    for goal, good, bad in _PHYSICAL_GOALS:
        yield piqa(goal, good, bad)
    tools = [tool for _, tool in _TASK_TOOLS]
    for task, tool in _TASK_TOOLS:
        for wrong in rng.sample([t for t in tools if t != tool], 4):
            yield piqa(f"To {task}, what should you use?", f"Use {tool}.", f"Use {wrong}.")


def _multiple_choice(rng: random.Random) -> Iterator[Record]:
    names = list(CATEGORIES)
    for category, items in CATEGORIES.items():
        others = [w for c in names if c != category for w in CATEGORIES[c]]
        for item in items:
            yield _choices(f"Which of these is {_article(category)}?", item, rng.sample(others, 3), rng)
    for ordered, most, least in ((_BY_WEIGHT, "heaviest", "lightest"), (_BY_SIZE, "largest", "smallest")):
        for _ in range(90):
            picks = sorted(rng.sample(range(len(ordered)), 4))
            names4 = [ordered[i] for i in picks]
            yield _choices(f"Which of these is the {most}?", names4[-1], names4[:-1], rng)
            yield _choices(f"Which of these is the {least}?", names4[0], names4[1:], rng)
    for a in range(3, 40, 2):
        for b in range(2, 30, 3):
            wrong = sorted({a + b + d for d in (-10, -2, -1, 1, 2, 10)} - {a + b})
            yield _choices(f"What is {a} plus {b}?", str(a + b), [str(w) for w in rng.sample(wrong, 3)], rng)
    for a in range(2, 11):
        for b in range(2, 11):
            wrong = sorted({a * b + d for d in (-a, a, -b, b, 1, -1)} - {a * b})
            yield _choices(f"What is {a} times {b}?", str(a * b), [str(w) for w in rng.sample(wrong, 3)], rng)
    words = sorted({w for items in CATEGORIES.values() for w in items})
    for _ in range(150):
        picked = rng.sample(words, 4)
        first = min(picked)
        yield _choices("Which word comes first in alphabetical order?", first, [w for w in picked if w != first], rng)
    tools = [tool for _, tool in _TASK_TOOLS]
    for task, tool in _TASK_TOOLS:
        yield _choices(
            f"Which tool would you use to {task}?", tool, rng.sample([t for t in tools if t != tool], 3), rng
        )


def _number_puzzles(rng: random.Random) -> Iterator[Record]:
    for start in range(1, 21):
        for step in range(1, 7):
            seq = ", ".join(str(start + k * step) for k in range(4))
            answer = start + 4 * step
            wrong = rng.sample(sorted({answer + d for d in (-step, step, 1, -1, 2 * step)} - {answer}), 3)
            yield _choices(f"What number comes next in the sequence {seq}?", str(answer), [str(w) for w in wrong], rng)
    for a in range(10, 43, 3):
        for b in range(1, 11):
            wrong = sorted({a - b + d for d in (-2, -1, 1, 2, b, 2 * b)} - {a - b})
            yield _choices(f"What is {a} minus {b}?", str(a - b), [str(w) for w in rng.sample(wrong, 3)], rng)
    for _ in range(150):
        numbers = rng.sample(range(1, 100), 4)
        top = max(numbers)
        yield _choices("Which number is the largest?", str(top), [str(n) for n in numbers if n != top], rng)
    words = sorted({w for items in CATEGORIES.values() for w in items if " " not in w})
    for word in words:
        wrong = sorted({len(word) + d for d in (-2, -1, 1, 2, 3)} - {len(word)})
        yield _choices(
            f'How many letters are in the word "{word}"?', str(len(word)), [str(w) for w in rng.sample(wrong, 3)], rng
        )


def _opposites(rng: random.Random) -> Iterator[Record]:
    others = [w for pair in _OPPOSITES for w in pair]
    for word, opposite in _OPPOSITES:
        for a, b in ((word, opposite), (opposite, word)):
            wrong = rng.sample([w for w in others if w not in (a, b)], 3)
            yield _choices(f'What is the opposite of "{a}"?', b, wrong, rng)
            yield _boolq(f'is "{b}" the opposite of "{a}"', True)
            yield _boolq(f'is "{rng.choice(wrong)}" the opposite of "{a}"', False)


def _feelings(rng: random.Random) -> Iterator[Record]:
    feelings = [f for f, _ in _FEELINGS]
    for feeling, situations in _FEELINGS:
        for situation in situations:
            for question in _FEELING_QUESTIONS:
                wrong = rng.sample([f for f in feelings if f != feeling], 2)
                yield _choices(f"{situation} {question}", feeling, wrong, rng)


def _endings(rng: random.Random) -> Iterator[Record]:
    endings = [e for _, e in _ACTIVITIES]
    for context, ending in _ACTIVITIES:
        for _ in range(3):
            yield _choices(
                context,
                ending,
                rng.sample([e for e in endings if e != ending], 3),
                rng,
                kind="ending",
                lead="Please choose the correct ending to complete the given sentence:",
            )


def _fill_blanks(rng: random.Random) -> Iterator[Record]:
    templates = (
        ("The {s} fit easily inside the {b} because the _ was small.", "s"),
        ("The {s} fit easily inside the {b} because the _ was big.", "b"),
        ("The {b} would not fit inside the {s} because the _ was too large.", "b"),
        ("The {b} would not fit inside the {s} because the _ was too small.", "s"),
    )
    weight = (
        ("It was easy to lift the {l} but not the {h}, because the _ was light.", "l"),
        ("It was easy to lift the {l} but not the {h}, because the _ was heavy.", "h"),
    )
    floats = ("feather", "leaf", "pencil")

    def wino(sentence: str, answer: str, other: str) -> Record:
        first, second = (answer, other) if rng.random() < 0.5 else (other, answer)
        return _record(
            "Please choose the correct answer to fill in the blank to complete the given sentence: "
            f"{sentence}\n\nOption1: {first} Option2: {second} Answer format: option1/option2",
            "option1" if first == answer else "option2",
        )

    for i, small in enumerate(_CONTAINMENT):
        for big in _CONTAINMENT[i + 1 :]:
            for template, key in templates:
                yield wino(template.format(s=small, b=big), small if key == "s" else big, big if key == "s" else small)
    for i, light in enumerate(_BY_WEIGHT):
        for heavy in _BY_WEIGHT[i + 2 :]:
            for template, key in weight:
                yield wino(
                    template.format(h=heavy, l=light), heavy if key == "h" else light, light if key == "h" else heavy
                )
            if light in floats and heavy in ("coin", "egg", "brick", "paper clip"):
                yield wino(
                    f"The {heavy} sank to the bottom but the {light} floated, because the _ was heavier.", heavy, light
                )


_FAMILIES: tuple[Callable[[random.Random], Iterator[Record]], ...] = (
    _arithmetic_truths,
    _category_truths,
    _word_truths,
    _physics_truths,
    _syllogisms,
    _physical_solutions,
    _multiple_choice,
    _number_puzzles,
    _opposites,
    _feelings,
    _endings,
    _fill_blanks,
)
