"""The near-miss guard: a semantic candidate is served only if the details that carry meaning agree.

Sentence embeddings place "capital of France" next to "capital of Germany" and "enable 2FA" next to
"disable 2FA". Each check below extracts one kind of detail from both prompts; any disagreement refuses
the candidate. The checks prefer refusing a paraphrase (a cache miss costs one upstream call) to serving a
near-miss (a wrong answer).
"""

import re
from dataclasses import dataclass
from functools import lru_cache

WORD = re.compile(r"[a-z0-9]+(?:[+#]+|'[a-z]+)?|[+#]+|°[cfk]\b", re.IGNORECASE)
IDENTIFIER = re.compile(
    r"#?\b(?=[\w./:@-]*\d)(?=[\w./:@-]*[a-z])[\w./:@-]{2,}\b|#\w+|\b\w+[._/@]\w+(?:[._/@]\w+)*\b", re.I
)
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:st|nd|rd|th|%|x)?(?![\w])", re.IGNORECASE)
CAPITALISED = re.compile(r"\b[A-Z][\w+#-]*")
CONTRACTIONS = {"n't": " not", "'s": "", "'re": " are", "'m": " am", "'ll": " will", "'ve": " have", "'d": " would"}


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


NUMBER_WORDS = {
    word: str(value)
    for value, words in enumerate(
        [
            ("zero", "none"),
            ("one", "single", "first", "once"),
            ("two", "second", "twice", "pair", "couple", "double"),
            ("three", "third", "thrice", "triple"),
            ("four", "fourth"),
            ("five", "fifth"),
            ("six", "sixth"),
            ("seven", "seventh"),
            ("eight", "eighth"),
            ("nine", "ninth"),
            ("ten", "tenth"),
            ("eleven",),
            ("twelve", "dozen"),
        ]
    )
    for word in words
}
NUMBER_WORDS.update({"twenty": "20", "thirty": "30", "fifty": "50", "hundred": "100", "thousand": "1000"})
# "one" and "second" are as often not numbers ("which one", "a second opinion"); they count only next to a noun
# of counting, so they are not in this set.
AMBIGUOUS_NUMBER_WORDS = frozenset({"one", "second", "none", "first", "once", "pair", "couple", "double", "single"})

NEGATIONS = frozenset({"not", "no", "never", "without", "cannot", "nothing", "nobody", "neither", "nor", "none"})

# Words of one class with opposite meanings: each word maps to (class, side). Prompts that both name a class must
# name the same side of it.
POLARITY_CLASSES = {
    "activation": (
        {"enable", "activate", "turn on", "switch on", "start", "allow", "unblock", "unlock", "install", "open"},
        {"disable", "deactivate", "turn off", "switch off", "stop", "block", "lock", "uninstall", "close"},
    ),
    "change": (
        {"increase", "raise", "grow", "expand", "maximize", "add"},
        {"decrease", "lower", "reduce", "shrink", "minimize", "remove", "delete"},
    ),
    "size": (
        {"largest", "biggest", "highest", "maximum", "max", "most", "longest", "tallest", "fastest", "best"},
        {"smallest", "lowest", "minimum", "min", "least", "shortest", "slowest", "worst"},
    ),
    "comparison": (
        {"more", "greater", "larger", "bigger", "higher", "faster", "better", "above", "over", "after"},
        {"less", "fewer", "smaller", "lower", "slower", "worse", "below", "under", "before"},
    ),
    "valence": (
        {"pros", "advantages", "benefits", "strengths", "positive"},
        {"cons", "disadvantages", "drawbacks", "weaknesses", "negative", "risks"},
    ),
    "transfer": (
        {"buy", "import", "download", "encrypt", "encode", "serialize", "upload", "deposit", "hire"},
        {"sell", "export", "decrypt", "decode", "deserialize", "withdraw", "fire"},
    ),
    "direction": (
        {"north", "east", "up", "left", "inbound", "incoming"},
        {"south", "west", "down", "right", "outbound", "outgoing"},
    ),
    "mood": ({"formal", "polite"}, {"informal", "casual", "rude"}),
    "length": ({"long", "detailed", "longer", "verbose"}, {"short", "brief", "shorter", "concise", "summary"}),
    "age": ({"old", "older", "oldest", "past", "previous", "last"}, {"new", "newer", "newest", "future", "next"}),
}

LANGUAGES = {
    "python": "python",
    "py": "python",
    "javascript": "javascript",
    "js": "javascript",
    "node": "javascript",
    "typescript": "typescript",
    "ts": "typescript",
    "java": "java",
    "kotlin": "kotlin",
    "scala": "scala",
    "c": "c",
    "c++": "c++",
    "cpp": "c++",
    "c#": "c#",
    "csharp": "c#",
    "golang": "go",
    "rust": "rust",
    "ruby": "ruby",
    "php": "php",
    "perl": "perl",
    "swift": "swift",
    "sql": "sql",
    "bash": "bash",
    "shell": "bash",
    "powershell": "powershell",
    "haskell": "haskell",
    "elixir": "elixir",
    "r": "r",
    "matlab": "matlab",
    "lua": "lua",
    "dart": "dart",
    "html": "html",
    "css": "css",
    "english": "english",
    "french": "french",
    "german": "german",
    "spanish": "spanish",
    "italian": "italian",
    "portuguese": "portuguese",
    "dutch": "dutch",
    "russian": "russian",
    "chinese": "chinese",
    "mandarin": "chinese",
    "japanese": "japanese",
    "korean": "korean",
    "arabic": "arabic",
    "hindi": "hindi",
    "polish": "polish",
    "swedish": "swedish",
    "turkish": "turkish",
    "greek": "greek",
    "hebrew": "hebrew",
}

UNITS = {
    "celsius": "celsius",
    "centigrade": "celsius",
    "°c": "celsius",
    "fahrenheit": "fahrenheit",
    "°f": "fahrenheit",
    "kelvin": "kelvin",
    "°k": "kelvin",
    "km": "km",
    "kilometer": "km",
    "kilometre": "km",
    "kilometers": "km",
    "kilometres": "km",
    "mile": "mile",
    "miles": "mile",
    "mph": "mph",
    "kph": "kph",
    "meter": "m",
    "meters": "m",
    "metre": "m",
    "metres": "m",
    "foot": "ft",
    "feet": "ft",
    "ft": "ft",
    "inch": "inch",
    "inches": "inch",
    "cm": "cm",
    "centimeters": "cm",
    "centimetres": "cm",
    "mm": "mm",
    "kg": "kg",
    "kilogram": "kg",
    "kilograms": "kg",
    "kilos": "kg",
    "lb": "lb",
    "lbs": "lb",
    "pound": "lb",
    "pounds": "lb",
    "gram": "g",
    "grams": "g",
    "ounce": "oz",
    "ounces": "oz",
    "oz": "oz",
    "liter": "l",
    "liters": "l",
    "litre": "l",
    "litres": "l",
    "gallon": "gal",
    "gallons": "gal",
    "cup": "cup",
    "cups": "cup",
    "usd": "usd",
    "dollar": "usd",
    "dollars": "usd",
    "eur": "eur",
    "euro": "eur",
    "euros": "eur",
    "gbp": "gbp",
    "sterling": "gbp",
    "yen": "jpy",
    "jpy": "jpy",
    "bitcoin": "btc",
    "btc": "btc",
    "byte": "b",
    "bytes": "b",
    "kb": "kb",
    "mb": "mb",
    "megabytes": "mb",
    "gb": "gb",
    "gigabytes": "gb",
    "tb": "tb",
    "second": "s",
    "seconds": "s",
    "minute": "min",
    "minutes": "min",
    "hour": "h",
    "hours": "h",
    "day": "day",
    "days": "day",
    "week": "week",
    "weeks": "week",
    "month": "month",
    "months": "month",
    "year": "year",
    "years": "year",
    "utc": "utc",
    "pst": "pst",
    "est": "est",
    "cet": "cet",
    "binary": "binary",
    "decimal": "decimal",
    "hex": "hex",
    "hexadecimal": "hex",
    "octal": "octal",
    "radians": "rad",
    "degrees": "deg",
}

FORMATS = {
    "bullet": "bullet",
    "bullets": "bullet",
    "bulleted": "bullet",
    "list": "bullet",
    "table": "table",
    "tables": "table",
    "json": "json",
    "yaml": "yaml",
    "yml": "yaml",
    "xml": "xml",
    "csv": "csv",
    "markdown": "markdown",
    "paragraph": "paragraph",
    "paragraphs": "paragraph",
    "sentence": "sentence",
    "sentences": "sentence",
    "word": "word",
    "words": "word",
    "haiku": "haiku",
    "poem": "poem",
    "limerick": "limerick",
    "sonnet": "sonnet",
    "essay": "essay",
    "email": "email",
    "tweet": "tweet",
    "slogan": "slogan",
    "story": "story",
    "joke": "joke",
    "code": "code",
    "function": "code",
    "script": "code",
    "diagram": "diagram",
    "chart": "chart",
    "outline": "outline",
    "steps": "steps",
    "step": "steps",
    "numbered": "numbered",
    "page": "page",
    "pages": "page",
}

# Named things often written in lower case: a gazetteer small enough to read, large enough for common prompts.
PLACES_AND_THINGS = _word_set(
    "france germany spain italy portugal japan china india brazil canada mexico australia russia egypt kenya nigeria "
    "argentina chile peru sweden norway finland denmark poland ireland scotland england wales greece turkey iran "
    "iraq israel korea vietnam thailand indonesia switzerland austria belgium netherlands holland ukraine "
    "paris berlin madrid rome lisbon tokyo beijing delhi london dublin moscow cairo sydney toronto york chicago "
    "boston seattle amsterdam vienna prague warsaw athens istanbul europe asia africa america antarctica "
    "mercury venus earth mars jupiter saturn uranus neptune pluto moon sun "
    "monday tuesday wednesday thursday friday saturday sunday january february march april may june july "
    "august september october november december spring summer autumn fall winter "
    "red blue green yellow orange purple black white pink brown gray grey "
    "cat cats dog dogs horse cow sheep lion tiger bird fish shark whale "
    "apple google microsoft amazon netflix tesla meta facebook twitter ibm oracle nvidia intel samsung "
    "aws azure gcp linux windows macos ios android iphone postgres postgresql mysql redis mongodb sqlite django "
    "flask react vue angular docker kubernetes terraform git"
)

STOPWORDS = _word_set(
    "a an the of to in on at for from by with about into as is are was were be been being am do does did done "
    "have has had i me my we our you your he she it its they them their this that these those what which who whom "
    "how why when where there here can could would should will shall may might must please tell give show let "
    "explain describe me us and or but if then so than too very just also some any all each every way ways thing "
    "things something get got make made want need like know use using used write help"
    " s t whats hows"
)
SENTENCE_STARTERS = STOPWORDS | _word_set(
    "summarize summarise list convert translate define compare find calculate compute name create generate draft "
    "suggest recommend is are"
)
SYNONYMS = {
    frozenset(pair)
    for pair in (
        ("fix", "repair"),
        ("fix", "solve"),
        ("error", "bug"),
        ("issue", "problem"),
        ("buy", "purchase"),
        ("big", "large"),
        ("small", "little"),
        ("quick", "fast"),
        ("begin", "start"),
        ("end", "finish"),
        ("car", "automobile"),
        ("film", "movie"),
        ("job", "work"),
        ("reset", "change"),
        ("say", "translate"),
        ("simple", "easy"),
        ("example", "sample"),
        ("meaning", "definition"),
        ("mean", "definition"),
        ("differ", "difference"),
        ("cost", "price"),
        ("setup", "configure"),
        ("set", "configure"),
    )
}


def _stem(word: str) -> str:
    """A crude stem that also folds British spellings (summarise, colour) into American ones."""
    word = word.replace("is", "iz") if word.endswith(("ise", "ised", "ising", "isation")) else word
    word = word.replace("our", "or") if word.endswith(("our", "ours")) and len(word) > 5 else word
    for suffix in ("ing", "ies", "ied", "ed", "es", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word.removesuffix("e") if len(word) > 4 else word


@dataclass(frozen=True, slots=True)
class PromptDetails:
    numbers: frozenset[str]
    identifiers: frozenset[str]
    entities: frozenset[str]
    words: frozenset[str]
    negated: bool
    polarity: dict[str, frozenset[str]]
    languages: frozenset[str]
    units: tuple[str, ...]
    formats: frozenset[str]
    content: frozenset[str]


def _expand(text: str) -> str:
    text = text.replace("’", "'")
    for short, long in CONTRACTIONS.items():
        text = re.sub(rf"(?<=\w){re.escape(short)}\b", long, text, flags=re.IGNORECASE)
    return text


def _number(token: str) -> str:
    value = token.lower().rstrip("%x").removesuffix("st").removesuffix("nd").removesuffix("rd").removesuffix("th")
    value = value.replace(",", "")
    try:
        number = float(value)
    except ValueError:
        return token.lower()
    return f"{number:g}" + ("%" if token.endswith("%") else "")


@lru_cache(maxsize=4096)
def prompt_details(text: str) -> PromptDetails:
    expanded = _expand(text)
    lower = expanded.lower()
    tokens = [token.lower() for token in WORD.findall(expanded)]
    words = frozenset(tokens)
    identifiers = frozenset(match.lower().lstrip("#") for match in IDENTIFIER.findall(expanded))
    numbers = {_number(match) for match in NUMBER.findall(expanded)}
    numbers |= {NUMBER_WORDS[t] for t in tokens if t in NUMBER_WORDS and t not in AMBIGUOUS_NUMBER_WORDS}
    entities = {
        match.lower().rstrip("-")
        for match in CAPITALISED.findall(expanded)
        if match.lower() not in SENTENCE_STARTERS and match.lower() not in NUMBER_WORDS
    }
    entities |= {t for t in tokens if t in PLACES_AND_THINGS}
    polarity: dict[str, set[str]] = {}
    padded = f" {' '.join(tokens)} "
    for name, (positive, negative) in POLARITY_CLASSES.items():
        for side, cues in (("+", positive), ("-", negative)):
            if any(f" {cue} " in padded for cue in cues):
                polarity.setdefault(name, set()).add(side)
    languages = frozenset(LANGUAGES[t] for t in tokens if t in LANGUAGES and (t != "c" or " in c" in lower))
    units: list[str] = []
    for token in tokens:
        unit = UNITS.get(token)
        if unit and unit not in units:
            units.append(unit)
    formats = frozenset(FORMATS[t] for t in tokens if t in FORMATS)
    content = frozenset(_stem(t) for t in tokens if t not in STOPWORDS and t not in NEGATIONS and not t.isdigit())
    return PromptDetails(
        numbers=frozenset(numbers),
        identifiers=identifiers,
        entities=frozenset(entities),
        words=words,
        negated=bool(words & NEGATIONS),
        polarity={name: frozenset(sides) for name, sides in polarity.items()},
        languages=languages,
        units=tuple(units),
        formats=formats,
        content=content,
    )


def _entities_agree(a: PromptDetails, b: PromptDetails) -> bool:
    """Every named thing in one prompt is mentioned in the other (in any case or position)."""
    b_words = b.words | {_stem(word) for word in b.words}
    a_words = a.words | {_stem(word) for word in a.words}
    return all(entity in b_words or _stem(entity) in b_words for entity in a.entities) and all(
        entity in a_words or _stem(entity) in a_words for entity in b.entities
    )


def _single_swap(a: PromptDetails, b: PromptDetails) -> bool:
    """Nearly the same words with exactly one swapped for another: the mark of an edit, not of a rephrasing."""
    only_a, only_b = a.content - b.content, b.content - a.content
    if len(only_a) != 1 or len(only_b) != 1 or len(a.content & b.content) < 2:
        return False
    return frozenset((*only_a, *only_b)) not in SYNONYMS


def near_miss_reason(prompt: str, candidate: str) -> str | None:
    """Why the candidate's answer must not be served for the prompt, or None when their details agree."""
    a, b = prompt_details(prompt), prompt_details(candidate)
    if a.numbers != b.numbers:
        return "numbers"
    if a.identifiers != b.identifiers:
        return "identifiers"
    if a.negated != b.negated:
        return "negation"
    for name in a.polarity.keys() & b.polarity.keys():
        if a.polarity[name] != b.polarity[name]:
            return f"polarity:{name}"
    if a.languages != b.languages:
        return "languages"
    if set(a.units) != set(b.units) or (len(a.units) > 1 and a.units != b.units):
        return "units"
    if a.formats != b.formats:
        return "format"
    if not _entities_agree(a, b):
        return "entities"
    if _single_swap(a, b):
        return "swapped-word"
    return None
