"""The near-miss guard: a semantic candidate is served only if the details that carry meaning agree.

Sentence embeddings place "capital of Austria" next to "capital of Australia", "encode" next to "decode" and
"a tuple to a list" next to "a list to a tuple". Each check in CHECKS extracts one class of detail from both
(normalised, lower-case) prompts and refuses the candidate when they disagree: numbers and their order, operators
(symbols only between operands), boolean connectives, identifiers, the names of a system's parts ("the users
table"), HTTP methods, locales, named things, formats and units, negation (with "except", "without" and negating
prefixes: "non-refundable"), opposite words and opposite prefixes on one stem ("allowlist"/"blocklist"), members of
one class of alternatives (actions, attributes, rows/columns...), the modal and tense a question opens with, who
plays which role around "from ... to", "than", conversion verbs and "when" clauses, and one prompt being the other
plus a clause. These refuse on a detected contrast of a class of words. Three checks look at the structure of the
edit instead, since each fresh set of near-misses brings words no table has: two spans exchanged around the same
frame, one verb's particle flipped, and one slot refilled by a word not known to mean the same. Before
comparing, words are folded to a lemma (inflection, nominalisation, British spelling), common synonyms to one word,
number words, abbreviations and converse question forms to one spelling, and politeness wrappers ("can you tell
me", "steps to") are ignored, so rephrasings agree. The checks prefer refusing a paraphrase (a cache miss costs one
upstream call) to serving a near-miss (a wrong answer). Every table here is a class of words, never one prompt pair:
extend a table, not the code.
"""

import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _counted(text: str) -> dict[str, str]:
    """Number words in counting order, each mapped to its value."""
    return {word: str(value) for value, word in enumerate(text.split())}


CONTRACTIONS = {"can't": "can not", "cannot": "can not", "won't": "will not", "n't": " not", "'s": "", "'re": " are"}
CONTRACTIONS |= {"'m": " am", "'ll": " will", "'ve": " have", "'d": " would"}
CONTRACTION = re.compile(r"\bcan't\b|\bcannot\b|\bwon't\b|(?<=\w)(?:n't|'s|'re|'m|'ll|'ve|'d)\b")

# Multi-word expressions folded to one word before tokenising, so a phrase and its one-word synonym agree.
PHRASES = {
    r"(?:raised )?to the power of|raised to": "^",
    r"\bsquared\b": "^ 2",
    r"\bcubed\b": "^ 3",
    r"multiplied by": "*",
    r"divided by": "/",
    r"greater than or equal to|at least": ">=",
    r"less than or equal to|at most": "<=",
    r"per ?cent|percentage points?": "%",
    r"turn(?:s|ed|ing)? on|switch(?:es|ed|ing)? on": "enable",
    r"turn(?:s|ed|ing)? off|switch(?:es|ed|ing)? off": "disable",
    r"(?:pa(?:y|ys|id|ying)|cash(?:es|ed|ing)?) out|payout": "payout",
    r"(?:roll(?:s|ed|ing)?|carr(?:y|ies|ied|ying)) (?:over|forward)|rollover": "rollover",
    r"opt(?:s|ed|ing)?[ -]out": "optout",
    r"opt(?:s|ed|ing)?[ -]in": "optin",
    r"sign(?:s|ed|ing)?[ -]up": "signup",
    r"(?:log|sign)(?:s|ged|ed|ging|ing)?[ -]?in(?:to)?\b": "login",
    r"(?:log|sign)(?:s|ged|ed|ging|ing)?[ -]?out\b": "logout",
    r"set(?:s|ting)?[ -]?up": "configure",
    r"speed(?:s|ing)? up": "accelerate",
    r"la(?:y|ys|id|ying) off": "dismiss",
    r"look(?:s|ed|ing)? up|work(?:s|ed|ing)? out": "find",
    r"get(?:s|ting)? rid of": "remove",
    r"(?:single sign[ -]?on|sso)": "sso",
    r"(?:two|2|multi)[ -]?(?:factor|step)(?: authentication| auth)?|2fa|mfa": "mfa",
    r"e-mail": "email",
    # Framing that is not content: "quick question:", "i see ...", "is there any way to".
    r"^\s*(?:a )?(?:quick|simple|small|short|silly|dumb|general) question\b:?": "",
    r"\bi (?:can )?(?:see|saw|notice|noticed|am seeing|have noticed)\b": "",
    r"\b(?:any|some) ?(?:way|how)\b": "way",
    # A payment that does not go through failed; it is not a negation of the question.
    r"\bnot ((?:\S+ ){0,3}?)(?:go|goes|went|gone|going) through\b": r"\1fail",
    # Yes/no questions by their modal: permission, obligation or advice, however phrased.
    r"^\s*(?:do|does) (?:i|we|you|they|he|she) (?:have|has|need|needs) to\b|^\s*(?:am|are|is) (?:i|we|you|it|they) "
    r"(?:required|obliged|mandatory|obligated) to\b|^\s*is it (?:required|mandatory|compulsory) to\b": "must",
    r"^\s*(?:am|are|is) (?:i|we|you|they|it) (?:not allowed|not permitted|unable) to\b|^\s*is it (?:impossible|not "
    r"possible) to\b": "can not",
    r"^\s*(?:am|are|is) (?:i|we|you|they|it) (?:allowed|permitted|able) to\b"
    r"|^\s*is it (?:possible|ok|okay|allowed) to\b|^\s*may (?:i|we)\b": "can",
    # Alternatives named to be set aside: the rest of the clause is not the question's detail.
    r"instead of|rather than": "instead",
    r"less expensive": "cheaper",
    r"more expensive|pricier|costlier": "expensive",
    r"(?:group|partition)(?:ed|ing)? (?:(?:the )?(?:rows|results|records|data) )?by": "groupby",
    r"\bback(?:s|ed|ing)?[- ]?up\b": "backup",
    r"(?:order|sort)(?:ed|ing)? by": "orderby",
    r"greatest common (?:divisor|factor)|highest common factor|\bgcf\b|\bhcf\b": "gcd",
    r"(?:least|lowest) common multiple": "lcm",
    r"\b(test|live) mode": r"\1mode",
    r"\b(access|refresh|id) token": r"\1token",
    r"\baverage\b|\b(?:the|a|an|arithmetic) mean\b": "avg",
    r"\b(local|session) storage\b": r"\1storage",
    r"standard output": "stdout",
    r"standard error": "stderr",
    r"standard input": "stdin",
    r"\b([ap])\.m\.": r"\1m",
    r"(?:http )?status code|http code|http status|error code": "http",
    r"how come": "why",
    r"\bturn(?:s|ed|ing)? down\b": "decline",
    r"\b(?:give|gives|gave|giving|given) back\b": "return",
    r"\bpayment card\b": "card",
    r"\beven though\b|\beven if\b|\bdespite\b|\balthough\b|\bthough\b": "despite",
    r"\bwalk (?:me|us) through\b": "",
    r"\bremotely (?=from home)|(?<=from home) remotely\b": "",
    r"\b(?:what is |what's )?the (?:number|count) of\b": "how many",
    r"united states(?: of america)?": "usa",
    r"united kingdom": "uk",
    r"\bww ?(?:ii|2)\b": "world war ii",
    r"\bww ?(?:i|1)\b": "world war i",
    r"most recent(?:ly)?\b": "last",
    r"\b(?:second|next)[- ]to[- ]last\b|\blast but one\b": "penultimate",
    r"\bthird[- ]to[- ]last\b": "antepenultimate",
    # What you no longer have, you lost; what you no longer do, you stopped.
    # Having lost access, no longer having it and being without it are one state.
    r"\bno longer (?:have|has|had)\b|\b(?:lost|lose|loses|losing) (?=access)": "no",
    r"\bno longer\b": "not",
    # What is left over was not used: "leftover credits" are "unused credits".
    r"\bleft ?over\b|\bunspent\b|\bremaining\b": "unused",
    # A temperature unit names its degrees: "how many degrees celsius" is "how many celsius".
    r"\bdegrees? (?=celsius|fahrenheit|centigrade|kelvin)": "",
    r"\bpayday\b": "pay day",
    # "What makes the sky blue" asks why it is.
    r"^\s*what (?:makes|made|causes|caused)\b": "why",
    # Doing without external libraries is doing with the built-in ones only.
    r"\bbuilt[- ]?in\b|\bstandard library\b|\bstdlib\b": "builtin",
    r"\bwithout (?:any |using )?(?:external|third[- ]party|extra|additional|outside)\b": "only builtin",
    r"(\d+)!(?!=)": r"\1 factorial",
    r"square root|\bsqrt\b": "sqrt",
    r"cube root|\bcbrt\b": "cbrt",
    r"(?:the )?square of (\S+)": r"\1 ^ 2",
    r"(?:the )?cube of (\S+)": r"\1 ^ 3",
    # "except" and its kin exclude something, like "without"; "without losing X" keeps X.
    r"other than|apart from|but not|excluding": "except",
    r"without (?:los|drop|delet|remov|break|chang)\w*|but (?:still )?keep(?:s|ing)?": "keeping",
    # A multiplicity is a count, not a product: "two times a month" is "twice a month".
    r"\b(?:two|2) times\b(?! \d)": "twice",
    r"\b(?:one|1) time\b(?! \d)": "once",
    r"(?:this|current) (day|week|month|quarter|year)": r"current_period \1",
    r"(?:last|previous|past|prior) (day|week|month|quarter|year)": r"previous_period \1",
    r"(?:next|coming|upcoming|following) (day|week|month|quarter|year)": r"next_period \1",
}
# A phrase starts at a word's start: "sso" is not in "associated".
PHRASE_PATTERNS = [
    (re.compile(rf"(?<![a-z0-9])(?:{pattern})"), replacement) for pattern, replacement in PHRASES.items()
]


def _phrases_joined(phrases: dict[str, str]) -> re.Pattern:
    """One pattern that matches where any of the phrases does. A reference to a group (a back-reference, or a
    conditional on a group) would point at another phrase's group once they are joined, so none may hold one."""
    if any(re.search(r"\\[1-9]|\(\?P=|\(\?\(", pattern) for pattern in phrases):
        raise ValueError(
            "phrase patterns must not refer to a group (back-references, conditionals): they are joined into one"
        )
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(f"(?:{pattern})" for pattern in phrases) + ")")


# Most prompts hold none of the phrases: one search for any of them spares the substitutions one by one (about a
# third of a prompt's parsing time). Exact: the loop changes nothing until a pattern matches, so a text in which none
# matches comes out of it unchanged.
PHRASE_ANY = _phrases_joined(PHRASES)

TOKEN = re.compile(
    r"2>&1|[$€£¥₹]|\d+(?:[.,]\d+)*(?:st|nd|rd|th|s)?(?![a-z])|\d+[a-z][a-z0-9]*"
    r"|[a-z][a-z0-9]*(?:[._@/'][a-z0-9]+)*[+#]*"
    r"|&&|\|\||>>|<<|->|=>|::|\|>|>=|<=|!=|==|\+=|-=|\*=|/=|\*\*|[-+*/^<>=%,;?!|&~]"
)
# Rewritten before tokenising: "401(k)" is "401k", a language tag ("en-US") is one locale token.
GLUED = (
    (re.compile(r"(\d)\(([a-z])\)"), r"\1\2"),
    # A prefix hyphenated or spaced off ("non-refundable", "pre-tax", "allow list") is one word with its stem.
    (re.compile(r"\b(non|un|dis|pre|post|over|under|up|down|sub|super|inter|intra)-(?=[a-z])"), r"\1"),
    (re.compile(r"\bnon (?=[a-z])"), "non"),
    (re.compile(r"\b(allow|block|deny|white|black|safe)[- ]list"), r"\1list"),
    (re.compile(r"\b(full|part)[- ]time\b"), r"\1time"),
    # A join named by its type is one word: "left outer join" is "leftjoin".
    (re.compile(r"\b(inner|left|right|full|cross|natural|self)(?: outer)? join"), r"\1join"),
    # A symbol in quotes is named by itself, like "the -".
    (re.compile(r"(['\"`])([-+*/^<>=])\1"), r" the \2 "),
    (re.compile(r"\b(en|de|fr|es|it|pt|nl|ja|ko|zh|ru|sv|pl|da|fi|nb|tr|ar|hi)[-_]([a-z]{2})\b"), r" tag_\1_\2 "),
)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:st|nd|rd|th|s)?")
CLAUSE_END = frozenset(",;?!")
# A name glued to its version ("python3", "v2", "es6", "ipv4") is split so "python3" and "python 3" agree.
# A number glued to its unit ("5km", "9am") is split; other glued ids ("401k", "2fa") stay one token.
GLUED_UNIT = re.compile(r"(\d+(?:\.\d+)?)([a-z]+)")
VERSIONED = re.compile(r"([a-z]+)(\d+(?:\.\d+)*)")
VERSIONED_NAMES = _words("v version es python py php java ipv http html css tls ssl oauth ios android win windows node")

CARDINALS = _counted(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
)
CARDINALS |= {"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000"}
CARDINALS |= {"million": "1e+06", "billion": "1e+09", "dozen": "12", "twice": "2", "double": "2", "half": "0.5"}
CARDINALS |= {"pair": "2"}
# A plural number word names its value: "rolling two sixes" is rolling two 6s.
CARDINALS |= {
    f"{word}s": value for word, value in _counted("zero one two three four five six seven eight nine ten").items()
}
CARDINALS |= {"sixes": "6"}
ORDINALS = _counted(
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
)
# Positions counted from the end or from here are ordinals too: "final" is "last", "second-to-last" is -2.
ORDINALS |= {"last": "last", "final": "last", "penultimate": "-2", "antepenultimate": "-3", "next": "next"}
ORDINALS |= {"thirtieth": "30", "hundredth": "100"}
ROMAN = {"ii": "2", "iii": "3", "iv": "4", "vi": "6", "vii": "7", "viii": "8", "ix": "9", "xi": "11", "xii": "12"}
ROMAN |= {"xiii": "13", "xiv": "14", "xv": "15", "xvi": "16", "xx": "20"}
# Any other well-formed numeral ("xlix", "mcmxc") counts if it has three letters or more and is not also a common
# word or abbreviation, or if it follows a word that takes a numeral ("convert xl", "chapter xc").
ROMAN_LETTERS = re.compile(r"m{0,3}(cm|cd|d?c{0,3})(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})")
ROMAN_VALUES = {"m": 1000, "d": 500, "c": 100, "l": 50, "x": 10, "v": 5, "i": 1}
ROMAN_LOOKALIKES = _words("mix cli div civ liv dix mdi mdx cdi mmm dcl cml cxx lvi")
# "i", "v" and "x" are numerals only after a noun that takes one ("world war i", "henry v", "part x").
SHORT_ROMAN = {"i": "1", "v": "5", "x": "10"}
ROMAN_NOUNS = _words(
    "war part chapter phase stage type tier level grade class act volume book season schedule article appendix "
    "henry louis george edward elizabeth charles james william richard john paul pope king queen emperor "
    "convert numeral numerals roman"
)
# Number words that often are not numbers ("which one", "at first", "a second"): they count only against a
# different number on the other side, never against silence.
WEAK_NUMBERS = _words("one first last final next single once half double pair ones tens")

NEGATIONS = _words("not no never without nothing nobody neither nor none unable except")
# A prefix that negates its stem ("nonrefundable", "invalid", "impossible", "disallow", "inactive"): against the
# bare stem on the other side it is a negation. Stems are at least four letters, so "index" is not "not dex".
NEGATING_PREFIXES = ("non", "un", "in", "im", "ir", "il", "dis")
# Opposite halves glued to one stem: "allowlist"/"blocklist", "upvote"/"downvote", "inbound"/"outbound",
# "pretax"/"posttax", "overpaid"/"underpaid", "foreground"/"background". The stem has three letters at least.
PREFIX_OPPOSITES = tuple(
    tuple(pair.split("/"))
    for pair in _words(
        "allow/block allow/deny white/black safe/block up/down in/out pre/post over/under en/de in/de in/ex im/ex "
        "on/off max/min upper/lower sub/super inter/intra left/right top/bottom inner/outer fore/back for/back"
    )
)
PREFIX_SIDES: dict[str, list[tuple[int, int]]] = {}
for _pair, _prefixes in enumerate(PREFIX_OPPOSITES):
    for _side, _prefix in enumerate(_prefixes):
        PREFIX_SIDES.setdefault(_prefix, []).append((_pair, _side))
PREFIX_SIZES = frozenset(len(prefix) for prefix in PREFIX_SIDES)
# "unused" is "not used": a participle negated by its prefix counts as one negation, so both spellings agree.
NEGATED_PARTICIPLE = re.compile(r"un(?!it|if|der)([a-z]{2,}(?:ed|en|id))")
# A restriction stated positively ("only built-in modules") is the negation on the other side ("without external
# libraries"): one such word balances one negation.
RESTRICTIONS = _words("only solely exclusively")
# The passive's agent ("supported by the API") and the existential ("is there async support in the SDK") put the
# object first: the words moved, the roles did not.
PASSIVE_MARKERS = _words("by there")
# A verb's particle: "zoom in" and "zoom out", "clock in" and "clock out", "sign up" and "sign off" are other acts.
PARTICLES = _words("in out on off up down over back")
PARTICLE_OPPOSITES = frozenset(
    frozenset(pair.split("/")) for pair in ("in/out", "on/off", "up/down", "over/back", "up/off", "in/off")
)
# Two things joined by these, or compared by these predicates, play the same role: "A and B" is "B and A".
SYMMETRIC_JOINERS = _words("and or vs versus with")
SYMMETRIC_PREDICATES = _words("between both differ different difference compare comparison similar same equal")
# A one-slot swap is served only when the two fillers are known to be the same; the slot is this short at most.
SLOT_SIZE = 2
# Fillers of one slot that ask the same, without being synonyms everywhere (so not folded): light verbs ("make" or
# "send" a request, "do" or "perform" a backup), and verbs with their noun or their gloss.
SLOT_EQUIVALENTS = (
    "make send do perform take put run execute issue fire",
    "request apply ask",
    "cancel terminate stop discontinue end",
    "charge bill",
    "configure connect link integrate",
    "stand short abbreviation acronym",
    "translate say",
    "derivative differentiate",
    "integral integrate antiderivative",
)
SPAN_SIZE = 3
# "and"/"or" as words or symbols: the logic of a filter or a condition.
CONNECTIVES = {"and": "and", "&&": "and", "or": "or", "||": "or", "nor": "nor", "xor": "xor"}

# Opposites: each class lists its sides; prompts that both name a class must name the same side of it.
OPPOSITES = {
    "activation": ("enable activate", "disable deactivate"),
    "start": ("start begin open commence", "end finish stop close expire"),
    "addition": ("add insert create", "remove delete drop"),
    "inclusion": ("include included inclusive", "exclude excluded exclusive"),
    "change": ("increase raise grow expand extend", "decrease lower reduce shrink cut"),
    "plan": ("upgrade", "downgrade"),
    "rank": ("promote promotion", "demote demotion"),
    "extreme": (
        "maximum max largest biggest highest most greatest tallest longest top",
        "minimum min smallest lowest least shortest bottom fewest",
    ),
    "comparison": (
        "more greater larger bigger higher above over longer further later after exceed",
        "less fewer smaller lower below under shorter earlier before",
    ),
    "transfer": ("import upload", "export download"),
    "encoding": ("encode", "decode"),
    "encryption": ("encrypt", "decrypt"),
    "serialization": ("serialize marshal", "deserialize unmarshal"),
    "compression": ("compress zip", "decompress unzip extract"),
    "sync": ("push", "pull fetch"),
    "messaging": ("send sender", "receive recipient receiver"),
    "subscription": ("subscribe", "unsubscribe"),
    "lock": ("lock freeze suspend", "unlock unfreeze unsuspend"),
    "archive": ("archive", "unarchive"),
    "sound": ("mute silence", "unmute"),
    "visibility": ("show display reveal", "hide conceal"),
    "permission": ("grant give", "revoke"),
    "access": (
        "allow permit unblock whitelist allowlist safelist",
        "block deny forbid ban blacklist blocklist denylist",
    ),
    "decision": ("accept approve", "reject decline deny"),
    "employment": ("hire recruit onboard", "fire terminate dismiss offboard"),
    "membership": ("join enrol enroll optin signup", "leave optout quit"),
    "lending": ("lend lender", "borrow borrower"),
    "trade": ("buy purchase buyer purchaser", "sell seller vendor"),
    "party": ("employer", "employee"),
    "ledger": ("credit", "debit"),
    "funds": ("deposit", "withdraw"),
    "leftover": ("payout", "rollover", "forfeit"),
    "need": ("required mandatory compulsory", "optional voluntary"),
    "sort": ("ascending asc", "descending desc"),
    "side": ("left", "right"),
    "compass-ns": ("north northern", "south southern"),
    "compass-ew": ("east eastern", "west western"),
    "vertical": ("up upward", "down downward"),
    "sun": ("rise sunrise", "set sunset"),
    "calculus": ("derivative differentiate", "integral integrate"),
    "phase": ("boil boiling", "freeze freezing melt"),
    "outcome": ("succeed success successful", "fail failure failed"),
    "pay": ("paid", "unpaid"),
    "exposure": ("public", "private"),
    "mode": ("read", "write"),
    "connectivity": ("online", "offline"),
    "scope": ("internal", "external"),
    "age": ("old older oldest legacy", "new newer newest latest"),
    "period": ("previous_period", "current_period", "next_period"),
    "speed": ("fast faster fastest quick accelerate", "slow slower slowest"),
    "truth": ("true", "false"),
    "parity": ("even", "odd"),
    "valence": ("pros advantages benefits strengths positive", "cons disadvantages drawbacks weaknesses negative"),
    "flow": ("input inbound incoming", "output outbound outgoing"),
    "mood": ("formal polite", "informal casual"),
    "length": ("long detailed verbose", "short brief concise"),
    "case": ("uppercase upper", "lowercase lower"),
    "hours": ("fulltime", "parttime"),
    "tax": ("gross", "net"),
    # Which of a set a question quantifies over; "full"/"entire"/"whole" fold to "all".
    "quantifier": ("all every each both", "any some either"),
    "extent": ("all", "partial partially"),
    "price": ("cheap cheaper cheapest inexpensive", "expensive pricey"),
    "quality": ("good better best", "bad worse worst"),
    "difficulty": ("easy easier easiest", "hard harder hardest difficult"),
    "safety": ("safe safer safest", "risky dangerous"),
    "temperature": ("hot hotter warm warmer", "cold colder cool cooler"),
    "weight": ("heavy heavier heaviest", "light lighter lightest"),
    "theme": ("dark", "light"),
    "width": ("wide wider", "narrow narrower"),
    "depth": ("deep deeper", "shallow shallower"),
    "timing": ("early earlier earliest", "late later latest"),
    "concurrency": ("sync synchronous synchronously blocking", "async asynchronous asynchronously nonblocking"),
    "nesting": ("inner innerjoin", "outer leftjoin rightjoin fulljoin"),
    "orientation": ("horizontal horizontally", "vertical vertically"),
    "path": ("absolute", "relative"),
    "location": ("local locally", "remote remotely"),
    "variable-scope": ("local", "global"),
    "geography": ("domestic", "international overseas abroad"),
    "week-part": ("weekday", "weekend"),
    "day": ("yesterday", "today tonight", "tomorrow"),
    "charge": ("free", "paid"),
    "session": ("login", "logout"),
    "bound": ("since", "until till"),
    "money-direction": ("charge", "refund"),
    "pause": ("pause", "resume unpause"),
    "typing": ("static statically", "dynamic dynamically"),
    "execution": ("compiled compiler", "interpreted interpreter"),
    "primality": ("prime", "composite"),
    "interest": ("simple", "compound"),
    "life": ("born birth", "die died death"),
    "environment": ("sandbox staging testmode", "production prod live livemode"),
    "message": ("request", "response"),
    "data-state": ("rest", "transit"),
    "rounding": ("ceil ceiling", "floor"),
    "firmness": ("soft", "hard"),
    "strength": ("strong stronger strongest", "weak weaker weakest"),
    "replication": ("primary master leader", "secondary replica standby follower"),
    "stack-op": ("push", "pop"),
}

# Classes of alternatives: prompts that both name members of a class must share one ("merge" is not "iterate",
# "capital" is not "currency", "rows" are not "columns"); a prompt that names two may share either.
KINDS = {
    "action": (
        "merge iterate loop sort reverse filter count sum join split copy clone compare flatten shuffle slice "
        "concatenate append rename install uninstall deploy test debug verify parse print "
        "cancel renew refund archive backup migrate rotate invite undo graph plot solve simplify factor expand "
        "approve submit configure union intersect extend rebase squash stash revert reset fork"
    ),
    "attribute": (
        "capital population currency language area size height weight age price length width depth speed "
        "distance temperature volume density mass radius diameter circumference perimeter capacity duration "
        "latency author city"
    ),
    "axis": "row column",
    "relative": "parent grandparent child grandchild spouse partner sibling sister brother mother father son daughter",
    "insurance": "dental vision medical health life disability pet travel",
    "leave": "maternity paternity parental sick bereavement jury vacation annual unpaid sabbatical",
    "join": "innerjoin leftjoin rightjoin fulljoin crossjoin naturaljoin selfjoin",
    "stream": "stdout stderr stdin",
    "statistic": "sum count avg median variance percentile max maximum min minimum",
    "platform": "mobile desktop web",
    "season": "summer winter autumn",
    "worker": "employee contractor intern freelancer consultant",
    "datatype": "list tuple dictionary array dataframe string integer float boolean",
    "sql-key": "primary foreign composite",
    "erase": "remove truncate drop",
    "grouping": "groupby orderby",
    "counting": "permutation combination",
    "divisor": "gcd lcm",
    "creator": "author painter inventor discover composer",
    "memory": "stack heap",
    "token": "accesstoken refreshtoken idtoken",
    "message-part": "header body footer",
    "contact": "email phone sms chat whatsapp",
    "credential": "username password pin email",
    "savings": "ira roth hsa fsa 401k 403b pension",
    "department": "hr payroll finance legal sales marketing engineering support",
    "declaration": "let const var",
    "loop-control": "break continue",
    "execution-unit": "process thread coroutine",
    "storage": "cookie localstorage sessionstorage",
    "git-ref": "branch tag commit",
    "billing-document": "invoice receipt quote estimate",
    "payment": "card wire ach sepa cheque",
    "compensation": "salary bonus commission equity overtime stipend",
}

# Words folded to one before comparing (the first word of each group is the one kept).
SYNONYM_GROUPS = (
    "change update modify edit amend",
    "colleague teammate coworker",
    "receive get obtain",
    "recover restore undelete",
    "remove delete",
    "create add make generate insert",
    "find locate calculate compute determine",
    "see view check",
    "verify validate",
    "show display",
    "speak talk",
    "start begin",
    "end finish",
    "fix solve repair resolve",
    "convert turn transform cast",
    "cost price",
    "big large",
    "small little",
    "fast quick",
    "export download",
    "import upload",
    "buy purchase",
    "fail decline",
    "multiple several many",
    "enrol enroll join signup",
    "configure set",
    "integer int",
    "dictionary dict",
    "string str",
    "boolean bool",
    "repository repo",
    "database db",
    "application app",
    "account profile",
    "document doc",
    "directory folder",
    "error exception",
    "picture image photo",
    "mean average",
    "chance probability likelihood",
    "author writer wrote",
    "painter painted",
    "inventor invented",
    "duplicate deduplicate dedupe duplicated",
    "restrict limit",
    # "get" is a light verb here, as is "retrieve" ("retrieve the id"); "recover" is the undeleting sense.
    "entitle get retrieve",
    "vacation pto",
    "undo revert",
    "policy rule",
    "all full entire whole",
    "maximum max",
    "minimum min",
)

# Politeness wrappers, question words and grammar: not content.
STOPWORDS = _words(
    "a an the of to in on at for from by with about into onto as is are was were be been being am do does did done "
    "have has had i me my mine we our us you your yours he she it its they them their this that these those what "
    "which who whom whose how why when where there here can could would should will shall may might must please "
    "tell give show let explain describe and or but if then so than too very just also some any all each every way "
    "ways thing things something want need like know help steps step process procedure possible "
    "able best kindly thanks thank hi hello question wondering anyone someone somebody formula syntax method "
    "correct right proper good really actually exactly currently again already still ever even one s t whats hows "
    "summarise summarize summary overview explanation definition meaning mean means does work works happen happens "
    "go going get getting got i'm im id ok okay via use using anymore itself myself yourself themselves mechanism "
    "approach technique per vs versus over under above below after before between "
    "through within across out up down off during since until while"
)
# Words that frame a question without changing its subject; ignored only when one prompt adds words to the other.
FRAMING_WORDS = _words(
    "purpose cause causes reason error function returns return syntax query command code sql find make made do take"
)
# Wrapper verbs that only frame a question: "can you explain X" is X.
WRAPPER_VERBS = _words("explain describe tell show give define clarify outline summarize summarise")

HTTP_METHODS = _words("get post put patch delete head options")
HTTP_CONTEXT = _words("http https request requests endpoint endpoints call calls method route verb")

# Locales: countries and regions, their codes, currencies and human languages, each folded to one name.
LOCALES = {
    **dict.fromkeys(("eu", "europe", "european", "eea"), "eu"),
    **dict.fromkeys(("usa", "america", "american", "states"), "us"),
    **dict.fromkeys(("uk", "britain", "british", "england", "english-speaking", "gb"), "uk"),
    **dict.fromkeys(("canada", "canadian"), "canada"),
    **dict.fromkeys(("australia", "australian"), "australia"),
    **dict.fromkeys(("germany", "german"), "germany"),
    **dict.fromkeys(("france", "french"), "france"),
    **dict.fromkeys(("spain", "spanish"), "spain"),
    **dict.fromkeys(("italy", "italian"), "italy"),
    **dict.fromkeys(("portugal", "portuguese"), "portugal"),
    **dict.fromkeys(("netherlands", "dutch", "holland"), "netherlands"),
    **dict.fromkeys(("japan", "japanese"), "japan"),
    **dict.fromkeys(("korea", "korean"), "korea"),
    **dict.fromkeys(("china", "chinese", "mandarin"), "china"),
    **dict.fromkeys(("india", "indian", "hindi"), "india"),
    **dict.fromkeys(("brazil", "brazilian"), "brazil"),
    **dict.fromkeys(("mexico", "mexican"), "mexico"),
    **dict.fromkeys(("ireland", "irish"), "ireland"),
    **dict.fromkeys(("sweden", "swedish"), "sweden"),
    **dict.fromkeys(("poland", "polish"), "poland"),
    **dict.fromkeys(("switzerland", "swiss"), "switzerland"),
    **dict.fromkeys(("russia", "russian"), "russia"),
    **dict.fromkeys(("singapore",), "singapore"),
    **dict.fromkeys(("apac", "asia"), "apac"),
    **dict.fromkeys(("emea",), "emea"),
    **dict.fromkeys(("latam",), "latam"),
    "english": "english",
    "arabic": "arabic",
    "turkish": "turkish",
    "greek": "greek",
    **dict.fromkeys(("usd", "dollar", "dollars", "$"), "usd"),
    **dict.fromkeys(("eur", "euro", "euros", "€"), "eur"),
    **dict.fromkeys(("gbp", "pound", "pounds", "sterling", "£"), "gbp"),
    **dict.fromkeys(("jpy", "yen", "¥"), "jpy"),
    **dict.fromkeys(("cad",), "cad"),
    **dict.fromkeys(("aud",), "aud"),
    **dict.fromkeys(("chf", "franc", "francs"), "chf"),
    **dict.fromkeys(("inr", "rupee", "rupees", "₹"), "inr"),
}
# "us" is a pronoun unless the words around it make it the country.
US_BEFORE = _words("the in outside across within")
US_AFTER = _words("dollar dollars customers customer users office employees market region based style format only")

# Named things often asked about; programming languages, products, places, plans. Two-word names are joined.
ENTITIES = _words(
    "python javascript typescript java kotlin scala c++ c# go golang rust ruby php perl swift bash powershell "
    "haskell elixir lua dart r matlab "
    "postgres postgresql mysql sqlite oracle mariadb mongodb redis bigquery snowflake sql_server dynamodb "
    "django flask rails react vue angular svelte node express spring laravel heroku vercel netlify "
    "docker kubernetes terraform git github gitlab bitbucket jira confluence slack microsoft_teams zoom "
    "salesforce hubspot zapier zendesk freshdesk intercom stripe paypal apple_pay google_pay quickbooks xero okta "
    "google microsoft apple amazon aws azure gcp linux windows macos ios android iphone ipad chrome firefox safari "
    "edge excel gmail outlook "
    "starter pro enterprise premium basic "
    "mercury venus earth mars jupiter saturn uranus neptune pluto moon sun "
    "paris berlin madrid rome lisbon tokyo beijing delhi london dublin moscow cairo sydney toronto new_york "
    "chicago boston seattle amsterdam vienna prague warsaw athens istanbul oslo austria australia "
    "monday tuesday wednesday thursday friday saturday sunday january february march april june july august "
    "september october november december "
    "circle triangle square rectangle sphere cylinder cone cube pyramid polygon hexagon pentagon octagon ellipse "
    "trapezoid parallelogram rhombus prism sqrt cbrt logarithm ln sin cos tan factorial "
    "egypt greece turkey argentina chile colombia peru nigeria kenya south_africa new_zealand norway finland denmark "
    "belgium hungary czechia ukraine vietnam thailand indonesia philippines pakistan iran iraq israel "
    "africa antarctica oceania south_america north_america "
    "oauth saml jwt ldap tcp udp graphql grpc soap websocket websockets kafka rabbitmq nginx apache "
    "admin administrator owner member guest viewer editor contributor moderator superuser"
)
JOINED_NAMES = ("sql server", "microsoft teams", "apple pay", "google pay", "new york", "south africa", "new zealand")
JOINED_NAMES += ("south america", "north america")
# Other names of the same thing.
ENTITY_ALIASES = {
    "postgresql": "postgres",
    "psql": "postgres",
    "golang": "go",
    "js": "javascript",
    "ts": "typescript",
    "k8s": "kubernetes",
    "mssql": "sql_server",
    "mac": "macos",
    "osx": "macos",
    "node.js": "node",
    "nodejs": "node",
    "vue.js": "vue",
    "vuejs": "vue",
    "react.js": "react",
    "reactjs": "react",
    "sine": "sin",
    "cosine": "cos",
    "tangent": "tan",
}
LANGUAGE_C = re.compile(r"\bin c\b|\bc (?:code|program|language)\b")
# "go" is the language only where it reads as one ("in go", "go modules", "golang", a "go:" topic label), not in
# "go through".
LANGUAGE_GO = re.compile(
    r"^\s*go ?[:,-]|\bgolang\b|\b(?:in|with|using|learn|write) go\b"
    r"|\bgo (?:code|programs?|language|modules?|structs?|slices?|maps?|channels?|routines?|func|functions?|"
    r"interfaces?|compiler|generics|tests?|packages?|binary|\d)"
)
# A role and its "-ship" ("ownership", "membership") name the same role.
ROLE_SUFFIX = "ship"
# "may" is the month after a word that takes a date or next to a number.
MONTH_BEFORE = _words("in of since until by early late mid before after from to through during")

UNITS = {
    **dict.fromkeys(("celsius", "centigrade", "°c"), "celsius"),
    **dict.fromkeys(("fahrenheit", "°f"), "fahrenheit"),
    "kelvin": "kelvin",
    **dict.fromkeys(("km", "kilometer", "kilometre", "kilometers", "kilometres"), "km"),
    **dict.fromkeys(("mile", "miles"), "mile"),
    **dict.fromkeys(("meter", "meters", "metre", "metres"), "m"),
    **dict.fromkeys(("foot", "feet", "ft"), "ft"),
    **dict.fromkeys(("inch", "inches"), "inch"),
    **dict.fromkeys(("cm", "centimeter", "centimetre", "centimeters", "centimetres"), "cm"),
    **dict.fromkeys(("kg", "kilogram", "kilograms", "kilo", "kilos"), "kg"),
    **dict.fromkeys(("lb", "lbs"), "lb"),
    **dict.fromkeys(("gram", "grams"), "g"),
    **dict.fromkeys(("liter", "liters", "litre", "litres"), "l"),
    **dict.fromkeys(("gallon", "gallons"), "gal"),
    **dict.fromkeys(("byte", "bytes"), "b"),
    **dict.fromkeys(("kb", "kilobyte", "kilobytes"), "kb"),
    **dict.fromkeys(("mb", "megabyte", "megabytes"), "mb"),
    **dict.fromkeys(("gb", "gigabyte", "gigabytes"), "gb"),
    **dict.fromkeys(("tb", "terabyte", "terabytes"), "tb"),
    "kib": "kib",
    "mib": "mib",
    "gib": "gib",
    **{unit: unit for unit in ("kbps", "mbps", "gbps", "hz", "khz", "mhz", "ghz", "mph", "kph")},
    **dict.fromkeys(("ms", "millisecond", "milliseconds"), "ms"),
    **dict.fromkeys(("seconds", "sec", "secs"), "s"),
    **dict.fromkeys(("minute", "minutes", "min", "mins"), "min"),
    **dict.fromkeys(("hour", "hours", "hr", "hrs"), "h"),
    **dict.fromkeys(("day", "days", "daily"), "day"),
    **dict.fromkeys(("week", "weeks", "weekly"), "week"),
    **dict.fromkeys(("month", "months", "monthly"), "month"),
    **dict.fromkeys(("quarter", "quarters", "quarterly"), "quarter"),
    **dict.fromkeys(("year", "years", "yearly", "annual", "annually"), "year"),
    **dict.fromkeys(("utc", "gmt"), "utc"),
    **dict.fromkeys(("pst", "pt", "pacific"), "pst"),
    **dict.fromkeys(("est", "et", "eastern"), "est"),
    "cet": "cet",
    "binary": "binary",
    "decimal": "decimal",
    **dict.fromkeys(("hex", "hexadecimal"), "hex"),
    "octal": "octal",
    **dict.fromkeys(("radian", "radians"), "rad"),
    **dict.fromkeys(("degree", "degrees"), "deg"),
    "%": "%",
}

# Output shapes and data formats, named by what the answer looks like.
FORMATS = {
    **dict.fromkeys(("bullet", "bullets", "bulleted"), "bullet"),
    "json": "json",
    **dict.fromkeys(("yaml", "yml"), "yaml"),
    "xml": "xml",
    "csv": "csv",
    "tsv": "tsv",
    "parquet": "parquet",
    "markdown": "markdown",
    "html": "html",
    "pdf": "pdf",
    **dict.fromkeys(("paragraph", "paragraphs"), "paragraph"),
    **dict.fromkeys(("sentence", "sentences"), "sentence"),
    **dict.fromkeys(("haiku", "poem", "limerick", "sonnet", "essay", "tweet", "slogan", "story", "joke")),
    "diagram": "diagram",
    "chart": "chart",
    "numbered": "numbered",
    # File types: images, documents, audio, video, archives and installers.
    **dict.fromkeys(("png", "gif", "svg", "webp", "bmp", "tiff", "heic", "ico", "txt", "rtf", "odt", "epub")),
    **dict.fromkeys(("jpg", "jpeg"), "jpg"),
    **dict.fromkeys(("docx", "xlsx", "xls", "pptx", "mp3", "wav", "flac", "ogg", "aac", "m4a")),
    **dict.fromkeys(("mp4", "mov", "avi", "mkv", "webm", "tar", "gz", "tgz", "rar", "7z")),
    **dict.fromkeys(("exe", "msi", "dmg", "deb", "rpm", "apk", "ipa")),
}
FORMATS = {word: shape or word for word, shape in FORMATS.items()}

# Converse question forms, rewritten to one: "a day has how many seconds" is "how many seconds are in a day", and a
# unit question ("how many miles is 5 km") is the conversion it asks for ("convert 5 km to miles").
_UNIT_WORDS = "|".join(sorted((word for word in UNITS if word.isalpha()), key=len, reverse=True))
CONVERSE_FORMS = (
    (
        re.compile(rf"\b((?:\S+ ){{0,4}}?(?:{_UNIT_WORDS})) (?:has|have|contains?) how (many|much) ({_UNIT_WORDS})\b"),
        r"how \2 \3 in \1",
    ),
    (
        re.compile(
            rf"\bhow (?:many|much) ({_UNIT_WORDS}) "
            r"(?:are there in|is there in|are in|is in|in|are|is|make|makes|equals?)"
            rf" ((?:\S+ ){{0,4}}?(?:{_UNIT_WORDS}))\b"
        ),
        r"convert \2 to \1",
    ),
)

OPERATORS = {"plus": "+", "minus": "-", "+": "+", "-": "-", "*": "*"}
OPERATORS |= {"/": "/", "^": "^", "**": "^", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "=": "=", "==": "="}
OPERATORS |= {"!=": "!=", "+=": "+=", "-=": "-=", "*=": "*=", "/=": "/="}
# Shell, SQL and programming operators compare as themselves: a pipe is not a redirect, "::" is not "->".
OPERATORS |= {symbol: symbol for symbol in ("|", "&", "~", ">>", "<<", "->", "=>", "::", "|>", "2>&1")}
COMPARISONS = frozenset(("<", ">", "<=", ">=", "=", "==", "!="))
# A symbol named by itself ("the + next to a line item", "what does the * sign mean") is what is asked about.
SYMBOL_BEFORE = _words("the a an this that")
SYMBOL_AFTER = _words("sign symbol character char key icon button operator")
# A one-letter parameter bound to a number ("r = 4") is that parameter ("radius 4"), not an equation.
PARAMETER_BINDING = re.compile(r"(?<![a-z0-9_.])([a-z]) ?= ?(?=[\d.])")
PARAMETERS = {"r": "radius", "d": "diameter", "h": "height", "w": "width", "l": "length", "b": "base"}
# Units only right after a number ("300s", "2 pm"); elsewhere these are other words.
NUMBER_UNITS = {"s": "s", "sec": "s", "second": "s", "am": "am", "pm": "pm"}
# "the users table", "the search endpoint", "the main branch": the name of one of a system's parts, compared as a
# class (both prompts naming one must name the same).
NAMED_NOUNS = _words(
    "table tables column columns field fields collection index schema view endpoint endpoints route api webhook "
    "queue topic bucket branch channel repository repo project workspace team plan tab page report dashboard"
)
DOTTED_NAME = re.compile(r"[a-z_]+\.[a-z_]+")

# Verbs whose "to" names a destination: "convert A to B", "move from A to B". "from" does too, on its own.
DIRECTION_VERBS = _words(
    "convert change switch move migrate transfer translate cast turn map sync copy send export import upgrade "
    "downgrade port go travel fly flight drive upload download push pull redirect forward pick merge rebase "
    "assign apply point route exchange compare"
)
# Role markers: what follows the marker plays that role until the clause ends or another marker starts.
ROLE_MARKERS = {"from": "source", "than": "compared", "vs": "compared", "versus": "compared", "^": "exponent"}
# Inside a clause (not opening it) these start a condition: "time in Tokyo when it's 9am in London".
CONDITION_MARKERS = _words("when if while whenever")
DESTINATION_MARKERS = _words("to into onto")
QUESTION_WORDS = _words("who when where why")
LEADING_WORDS = _words("much many long often")
# A yes/no question opened by a modal asks for permission, obligation or advice ("can i", "must i", "should i");
# phrases such as "do i have to" and "am i allowed to" are folded to these first.
MODALS = {"can": "can", "could": "can", "may": "can", "might": "can", "must": "must", "shall": "should"}
MODALS |= {"should": "should", "ought": "should"}
# The tense of the first auxiliary before the content: what happened is another question than what is or will be.
# "has"/"have" (present perfect) agree with either.
TENSES = {"was": "past", "were": "past", "did": "past", "had": "past", "will": "future", "shall": "future"}
TENSES |= {"is": "present", "are": "present", "am": "present", "do": "present", "does": "present"}

IRREGULAR = {
    "paid": "pay",
    "got": "get",
    "gotten": "get",
    "sent": "send",
    "made": "make",
    "took": "take",
    "taken": "take",
    "gave": "give",
    "given": "give",
    "wrote": "write",
    "spoke": "speak",
    "spoken": "speak",
    "said": "say",
    "told": "tell",
    "shown": "show",
    "seen": "see",
    "known": "know",
    "drawn": "draw",
    "broken": "break",
    "forgotten": "forget",
    "hidden": "hide",
    "meant": "mean",
    "written": "write",
    "bought": "buy",
    "sold": "sell",
    "lent": "lend",
    "built": "build",
    "found": "find",
    "lost": "lose",
    "kept": "keep",
    "spent": "spend",
    "began": "begin",
    "begun": "begin",
    "went": "go",
    "ran": "run",
    "chose": "choose",
    "chosen": "choose",
    "froze": "freeze",
    "frozen": "freeze",
    "subscription": "subscribe",
    "subscriptions": "subscribe",
    "deletion": "delete",
    "proration": "prorate",
    "prorated": "prorate",
    "unable": "unable",
    "nothing": "nothing",
}


INFLECTIONS = frozenset(("ies", "ied", "ing", "ed", "es", "s"))


@lru_cache(maxsize=16384)
def _lemma(word: str) -> str:
    """A crude lemma: folds inflection, common nominalisations and British spellings to one stem, so "summarise",
    "summarized" and "summary", or "payment" and "pay", compare equal. Used on both prompts alike; it only has to
    be consistent, not linguistically right."""
    if word in IRREGULAR:
        return _lemma(IRREGULAR[word]) if IRREGULAR[word] != word else word
    if len(word) <= 3 or not word.isalpha():
        return word
    word = re.sub(r"is(e|ed|es|ing|ation|ations)$", r"iz\1", word)
    word = re.sub(r"our$", "or", word) if len(word) > 5 else word
    for suffix in (
        "izations",
        "ization",
        "ations",
        "ation",
        "ments",
        "ment",
        "izing",
        "ized",
        "izes",
        "ize",
        "ity",
        "ences",
        "ence",
        "ances",
        "ance",
        "ies",
        "ied",
        "ing",
        "ion",
        "ed",
        "es",
        "al",
        "ly",
        "y",
        "s",
        "e",
    ):
        if word.endswith(suffix) and len(word) - len(suffix) >= (3 if suffix in INFLECTIONS else 4):
            word = word[: -len(suffix)]
            break
    if len(word) > 4 and word[-1] == word[-2] and word[-1] not in "aeiousz":
        word = word[:-1]
    return word.removesuffix("e") if len(word) > 4 else word


SYNONYMS = {_lemma(word): _lemma(group.split()[0]) for group in SYNONYM_GROUPS for word in group.split()}


def _canonical(word: str) -> str:
    lemma = _lemma(word)
    return SYNONYMS.get(lemma, lemma)


OPPOSITE_SIDES: dict[str, list[tuple[str, int]]] = {}
for _name, _sides in OPPOSITES.items():
    for _side, _members in enumerate(_sides):
        for _word in _members.split():
            OPPOSITE_SIDES.setdefault(_canonical(_word), []).append((_name, _side))
KINDS_OF: dict[str, list[str]] = {}
for _name, _words_of_kind in KINDS.items():
    for _word in _words_of_kind.split():
        KINDS_OF.setdefault(_canonical(_word), []).append(_name)
STOP_LEMMAS = frozenset(_canonical(word) for word in STOPWORDS | WRAPPER_VERBS) - {"not", "no"}
FRAMING_LEMMAS = frozenset(_canonical(word) for word in FRAMING_WORDS)
DIRECTION_LEMMAS = frozenset(_canonical(word) for word in DIRECTION_VERBS)
SLOT_EQUIVALENTS_OF: dict[str, set[int]] = {}
for _group, _members in enumerate(SLOT_EQUIVALENTS):
    for _word in _members.split():
        SLOT_EQUIVALENTS_OF.setdefault(_canonical(_word), set()).add(_group)
JOINER_LEMMAS = frozenset(_canonical(word) for word in SYMMETRIC_JOINERS)
SYMMETRIC_LEMMAS = JOINER_LEMMAS | frozenset(_canonical(word) for word in SYMMETRIC_PREDICATES)
# Kept in the sequence as structure: joiners, symmetric predicates, and the start of a condition (so a condition
# moved to the front is not read as two words exchanged); the one-slot check sets joiners and conditions aside.
CONDITION_LEMMAS = frozenset(_canonical(word) for word in CONDITION_MARKERS)
SEQUENCE_MARKERS = SYMMETRIC_LEMMAS | CONDITION_LEMMAS
STRUCTURE_LEMMAS = JOINER_LEMMAS | CONDITION_LEMMAS


@dataclass(frozen=True, slots=True)
class PromptDetails:
    numbers: tuple[str, ...]
    weak_numbers: frozenset[str]
    operators: tuple[str, ...]
    identifiers: frozenset[str]
    method_words: frozenset[str]
    http_methods: frozenset[str]
    locales: tuple[str, ...]
    entities: frozenset[str]
    units: tuple[str, ...]
    formats: tuple[str, ...]
    negations: int
    opposites: dict[str, frozenset[int]]
    connectives: frozenset[str]
    kinds: dict[str, frozenset[str]]
    schema_names: frozenset[str]
    roles: dict[str, tuple[str, ...]]
    question_words: frozenset[str]
    content: frozenset[str]
    variables: frozenset[str]
    prefix_stems: frozenset[tuple[int, int, str]]
    lemmas: frozenset[str]
    prefixed: tuple[tuple[str, str], ...]
    modal: str | None
    tense: str | None
    restricted: bool
    passive: bool
    particles: frozenset[tuple[str, str]]
    sequence: tuple[str, ...]


def _prepare(text: str) -> str:
    text = text.lower().replace("’", "'")
    text = CONTRACTION.sub(lambda match: CONTRACTIONS[match.group()], text)
    for pattern, replacement in GLUED:
        text = pattern.sub(replacement, text)
    text = PARAMETER_BINDING.sub(lambda match: f" {PARAMETERS.get(match.group(1), match.group(1))} ", text)
    if PHRASE_ANY.search(text):
        for pattern, replacement in PHRASE_PATTERNS:
            text = pattern.sub(f" {replacement} ", text)
    for name in JOINED_NAMES:
        text = text.replace(name, name.replace(" ", "_"))
    for pattern, replacement in CONVERSE_FORMS:
        text = pattern.sub(replacement, text)
    return text


def _number(token: str) -> str:
    value = re.sub(r"(st|nd|rd|th|s)$", "", token).replace(",", "")
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


def _tokens(text: str) -> list[str]:
    """Words, numbers and operators in order; a hyphen inside a word ("sign-on") is not a minus."""
    tokens = []
    for match in TOKEN.finditer(text):
        token = match.group()
        if token in "-+/" and len(token) == 1:
            before = text[match.start() - 1] if match.start() else " "
            after = text[match.end()] if match.end() < len(text) else " "
            if before.isalpha() and after.isalpha():
                continue
            if token == "/" and not (before.isdigit() or (before == " " and after in " (0123456789")):
                continue
        token = ENTITY_ALIASES.get(token, token)
        glued = GLUED_UNIT.fullmatch(token)
        if glued and (glued.group(2) in UNITS or glued.group(2) in NUMBER_UNITS):
            tokens.extend(glued.groups())
            continue
        split = VERSIONED.fullmatch(token)
        if split and split.group(1) in VERSIONED_NAMES:
            tokens.extend(split.groups())
            continue
        tokens.append(token)
    return tokens


def _numeric(tokens: list[str], index: int) -> str | None:
    token = tokens[index]
    if NUMBER.fullmatch(token):
        return _number(token)
    value = CARDINALS.get(token) or ORDINALS.get(token) or ROMAN.get(token)
    if value is None and token in SHORT_ROMAN and index and tokens[index - 1] in ROMAN_NOUNS:
        value = SHORT_ROMAN[token]
    if (
        token == "second"
        and index
        and (tokens[index - 1] in _words("a per each every one") or _is_number(tokens, index - 1))
    ):
        return None
    if value is None and len(token) > 1 and ROMAN_LETTERS.fullmatch(token):
        follows_noun = index and tokens[index - 1] in ROMAN_NOUNS
        if follows_noun or (len(token) > 2 and token not in ROMAN_LOOKALIKES):
            value = _roman(token)
    return value


def _is_number(tokens: list[str], index: int) -> bool:
    return NUMBER.fullmatch(tokens[index]) is not None or tokens[index] in CARDINALS


def _roman(numeral: str) -> str:
    values = [ROMAN_VALUES[letter] for letter in numeral]
    total = sum(-value if value < after else value for value, after in zip(values, [*values[1:], 0], strict=True))
    return str(total)


def _standalone_symbol(tokens: list[str], index: int) -> bool:
    """A symbol talked about, not used: after "the"/"a" or before "sign"/"symbol"."""
    before = tokens[index - 1] if index else ""
    after = tokens[index + 1] if index + 1 < len(tokens) else ""
    return len(tokens[index]) == 1 and (before in SYMBOL_BEFORE or after in SYMBOL_AFTER)


def _operand(token: str, *, names: bool = True) -> bool:
    """A number, a variable, an id or (names=True) a name such as a column: what an operator joins; never a
    question word."""
    if any(c.isdigit() for c in token) or (len(token) == 1 and token.isalpha()) or "_" in token or "." in token:
        return True
    return names and token[:1].isalpha() and token not in STOPWORDS


def _is_operator(tokens: list[str], index: int) -> bool:
    """An operator word ("plus") always; a symbol only before an operand and after one (or after another operator,
    or anything for a comparison: "is > 5"), so "sqrt(144) = ?" or "... - why?" is punctuation."""
    token = tokens[index]
    if token.isalpha():
        return True
    before = tokens[index - 1] if index else ""
    after = tokens[index + 1] if index + 1 < len(tokens) else ""
    if len(token) > 1 or token in "<>":
        return True
    # "price * quantity" multiplies names; "Python - dedupe a list" is a dash: a sign joins numbers or variables.
    names = token not in "+-&"
    return _operand(after, names=names) and (
        token in COMPARISONS or _operand(before, names=names) or before in OPERATORS
    )


def _between_numbers(tokens: list[str], index: int) -> bool:
    return 0 < index < len(tokens) - 1 and None not in (_numeric(tokens, index - 1), _numeric(tokens, index + 1))


def _is_us_country(tokens: list[str], index: int) -> bool:
    before = tokens[index - 1] if index else ""
    after = tokens[index + 1] if index + 1 < len(tokens) else ""
    return before in US_BEFORE or after in US_AFTER


@lru_cache(maxsize=4096)
def prompt_details(text: str) -> PromptDetails:
    prepared = _prepare(text)
    tokens = _tokens(prepared)
    numbers: list[str] = []
    weak: set[str] = set()
    operators: list[str] = []
    locales: list[str] = []
    units: list[str] = []
    formats: list[str] = []
    identifiers, entities, methods, http_methods, content, questions = set(), set(), set(), set(), set(), set()
    opposites: dict[str, set[int]] = {}
    roles: dict[str, list[str]] = {}
    role, directed, negations, aside = "head", False, 0, False
    lemmas: set[str] = set()
    variables: set[str] = set()
    prefixed: list[tuple[str, str]] = []
    connectives: list[str] = []
    kinds: dict[str, set[str]] = {}
    schema_names: set[str] = set()
    for index, token in enumerate(tokens):
        if token in CLAUSE_END:
            role, directed, aside = "head", False, False
            continue
        if aside or token == "instead":
            aside = True
            continue
        if token.isalpha():
            lemmas.add(_lemma(token))
        if len(token) == 1 and token.isalpha() and token not in "ai":
            variables.add(token)
        if token.isalpha() and not NEGATED_PARTICIPLE.fullmatch(token):
            prefixed.extend(
                (_lemma(token), _lemma(token[len(prefix) :]))
                for prefix in NEGATING_PREFIXES
                if token.startswith(prefix) and len(token) - len(prefix) >= 4
            )
        value = _numeric(tokens, index)
        if value is not None:
            numbers.append(value)
            if token in WEAK_NUMBERS:
                weak.add(value)
            roles.setdefault(value, []).append(role)
            continue
        if token in NUMBER_UNITS and index and _is_number(tokens, index - 1):
            units.append(NUMBER_UNITS[token])
            continue
        if token == "times":
            if _between_numbers(tokens, index):
                operators.append("*")
            continue
        if token in CONNECTIVES:
            connectives.append(CONNECTIVES[token])
        if token in OPERATORS:
            if _is_operator(tokens, index) or _standalone_symbol(tokens, index):
                operators.append(OPERATORS[token])
                if token == "^":
                    role = "exponent"
            continue
        if token.startswith("tag_"):
            locales.append(token)
        if token in LOCALES or (token == "us" and _is_us_country(tokens, index)):
            locales.append(LOCALES.get(token, "us"))
            roles.setdefault(locales[-1], []).append(role)
        if token in UNITS:
            units.append(UNITS[token])
        if token in FORMATS:
            formats.append(FORMATS[token])
        before = tokens[index - 1] if index else ""
        if (
            (token in ENTITIES and token != "go")
            or (token == "c" and LANGUAGE_C.search(prepared))
            or (token == "go" and LANGUAGE_GO.search(prepared))
        ):
            entities.add(token)
        elif token.endswith(ROLE_SUFFIX) and token.removesuffix(ROLE_SUFFIX) in ENTITIES:
            entities.add(token.removesuffix(ROLE_SUFFIX))
        elif token == "may" and (before in MONTH_BEFORE or _is_number(tokens, index - 1) if index else False):
            entities.add(token)
        if token in HTTP_METHODS:
            methods.add(token)
            if index + 1 < len(tokens) and (tokens[index + 1] in HTTP_CONTEXT or tokens[index + 1][0] == "/"):
                http_methods.add(token)
        opens_clause = not index or tokens[index - 1] in CLAUSE_END
        if token in QUESTION_WORDS and (opens_clause or tokens[index - 1] in STOPWORDS):
            questions.add(token)
        if token in CONDITION_MARKERS and not opens_clause:
            role = "condition"
            continue
        if token in NEGATIONS:
            negations += 1
            continue
        negated = NEGATED_PARTICIPLE.fullmatch(token)
        if negated:
            negations += 1
            token = negated.group(1)
        if token in NAMED_NOUNS and index > 1 and tokens[index - 2] == "the":
            schema_names.add(_canonical(tokens[index - 1]))
        if DOTTED_NAME.fullmatch(token):
            schema_names.update(_canonical(part) for part in token.split("."))
        if any(mark in token for mark in "._@/") or (any(c.isdigit() for c in token) and token.isalnum()):
            identifiers.add(token)
        if token in ROLE_MARKERS:
            role, directed = ROLE_MARKERS[token], directed or token == "from"
            continue
        if token in DESTINATION_MARKERS:
            if directed:
                role = "destination"
            continue
        word = _canonical(token)
        for name, side in OPPOSITE_SIDES.get(word, ()):
            opposites.setdefault(name, set()).add(side)
        for name in KINDS_OF.get(word, ()):
            kinds.setdefault(name, set()).add(word)
        directed = directed or word in DIRECTION_LEMMAS
        if word in STOP_LEMMAS or (len(word) == 1 and word in "ai"):
            continue
        content.add(word)
        roles.setdefault(word, []).append(role)
    return PromptDetails(
        numbers=tuple(numbers),
        weak_numbers=frozenset(weak),
        operators=tuple(operators),
        identifiers=frozenset(identifiers),
        method_words=frozenset(methods),
        http_methods=frozenset(http_methods),
        locales=tuple(locales),
        entities=frozenset(entities),
        units=tuple(units),
        formats=tuple(formats),
        negations=negations,
        opposites={name: frozenset(sides) for name, sides in opposites.items()},
        connectives=frozenset(connectives),
        kinds={name: frozenset(words) for name, words in kinds.items()},
        schema_names=frozenset(schema_names) - STOP_LEMMAS,
        roles={word: tuple(word_roles) for word, word_roles in roles.items()},
        question_words=frozenset(questions),
        content=frozenset(content),
        variables=frozenset(variables),
        prefix_stems=frozenset(
            (pair, side, lemma[size:])
            for lemma in lemmas
            for size in PREFIX_SIZES
            if len(lemma) - size >= 3
            for pair, side in PREFIX_SIDES.get(lemma[:size], ())
        ),
        lemmas=frozenset(lemmas),
        prefixed=tuple(prefixed),
        modal=MODALS.get(tokens[0]) if tokens else None,
        tense=_tense(tokens),
        restricted=not RESTRICTIONS.isdisjoint(tokens),
        passive=not PASSIVE_MARKERS.isdisjoint(tokens),
        particles=frozenset(
            (_canonical(token), particle)
            for token, particle in pairwise(tokens)
            if particle in PARTICLES and token.isalpha() and _canonical(token) not in STOP_LEMMAS
        ),
        sequence=_sequence(tokens),
    )


def _sequence(tokens: list[str]) -> tuple[str, ...]:
    """The prompt's content in order, each word folded (lemma, synonym), numbers to their value, symbols as
    themselves, with the words that make a relation symmetric ("and", "vs", "between") kept: what the transposition
    and one-slot checks compare."""
    sequence, aside = [], False
    for index, token in enumerate(tokens):
        if token in CLAUSE_END:
            aside = False
            continue
        if aside or token == "instead":
            aside = True
            continue
        value = _numeric(tokens, index)
        if value is not None:
            sequence.append(f"#{value}")
            continue
        if token in OPERATORS:
            if _is_operator(tokens, index) or _standalone_symbol(tokens, index):
                sequence.append(OPERATORS[token])
            continue
        if token == "times" and _between_numbers(tokens, index):
            sequence.append("*")
            continue
        if token in NEGATIONS:
            sequence.append("not")
            continue
        negated = NEGATED_PARTICIPLE.fullmatch(token)
        word = UNITS.get(token) or LOCALES.get(token) or FORMATS.get(token)
        word = word or (_canonical(negated.group(1) if negated else token) if token[:1].isalnum() else token)
        if negated:
            sequence.append("not")
        if word in SEQUENCE_MARKERS or (word not in STOP_LEMMAS and word not in ("a", "i")):
            sequence.append(word)
    return tuple(sequence)


def _tense(tokens: list[str]) -> str | None:
    """The tense of the first auxiliary among the question's opening words ("when was", "how much will")."""
    for token in tokens:
        if token in TENSES:
            return TENSES[token]
        if token not in STOPWORDS and token not in LEADING_WORDS:
            return None
    return None


def _in_order(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """The details both name come in the same order: "3 to the power of 4" is not "4 to the power of 3"."""
    shared = set(a) & set(b)
    return [x for x in dict.fromkeys(a) if x in shared] == [x for x in dict.fromkeys(b) if x in shared]


def _numbers_agree(a: PromptDetails, b: PromptDetails) -> bool:
    only_a, only_b = set(a.numbers) - set(b.numbers), set(b.numbers) - set(a.numbers)
    if not only_a and not only_b:
        return True
    # A weak number word left unmatched ("which one", "at first", "one roll") is not a detail; against another
    # unmatched number it is ("first" / "last", "one" / "two").
    return (not only_a and only_b <= b.weak_numbers) or (not only_b and only_a <= a.weak_numbers)


def _roles_swapped(a: PromptDetails, b: PromptDetails) -> bool:
    """A word that moved from source to destination, or two words that traded roles ("A than B" / "B than A")."""
    moved = {}
    for word in a.roles.keys() & b.roles.keys():
        role_a, role_b = a.roles[word], b.roles[word]
        if role_a != role_b and len(role_a) == len(role_b) == 1:
            moved[word] = (role_a[0], role_b[0])
    changes = set(moved.values())
    return bool(changes & {("source", "destination"), ("destination", "source")}) or any(
        (after, before) in changes for before, after in changes
    )


def _clause_added(a: PromptDetails, b: PromptDetails) -> bool:
    """One prompt is the other plus two or more content words ("... have I used so far", "... to climb it"): a
    question about the first one's subject, not a rewording of it. One added word is often only emphasis, and
    framing words ("what causes", "the purpose of", "which function returns") frame the same question."""
    added = (a.content ^ b.content) - FRAMING_LEMMAS
    return len(added) >= 2 and (a.content <= b.content or b.content <= a.content)


def _identifiers_differ(a: PromptDetails, b: PromptDetails) -> bool:
    """Ids differ, unless an id on one side is spelled out in words on the other ("users.email" / "the email column
    of the users table")."""

    def spelled_out(identifier: str, other: PromptDetails) -> bool:
        parts = {_canonical(part) for part in re.split(r"[._@/]", identifier) if part}
        return bool(parts) and parts <= other.content | other.schema_names

    return any(not spelled_out(x, b) for x in a.identifiers - b.identifiers) or any(
        not spelled_out(x, a) for x in b.identifiers - a.identifiers
    )


def _http_methods_differ(a: PromptDetails, b: PromptDetails) -> bool:
    # "get" and "post" are English words too: they count as methods when both prompts name one, or next to
    # "request", "endpoint" or a path.
    return a.http_methods != b.http_methods or bool(
        a.method_words and b.method_words and a.method_words != b.method_words
    )


def _opposite_sides(a: PromptDetails, b: PromptDetails) -> str | None:
    for name in a.opposites.keys() & b.opposites.keys():
        if a.opposites[name] != b.opposites[name]:
            return f"opposite:{name}"
    return None


def _other_kind(a: PromptDetails, b: PromptDetails) -> str | None:
    for name in a.kinds.keys() & b.kinds.keys():
        if not a.kinds[name] & b.kinds[name]:
            return f"kind:{name}"
    return None


def _prefix_negated(a: PromptDetails, b: PromptDetails) -> bool:
    """One side has "nonrefundable" / "invalid" / "impossible" where the other has the bare stem."""

    def negates(x: PromptDetails, y: PromptDetails) -> bool:
        return any(word not in y.lemmas and stem in y.lemmas and stem not in x.lemmas for word, stem in x.prefixed)

    return negates(a, b) or negates(b, a)


def _prefix_opposites(a: PromptDetails, b: PromptDetails) -> str | None:
    """Opposite prefixes on one stem: "allowlist"/"blocklist", "upvote"/"downvote", "pretax"/"posttax"."""
    for pair, side, stem in a.prefix_stems - b.prefix_stems:
        other = (pair, 1 - side, stem)
        if other in b.prefix_stems and other not in a.prefix_stems:
            return "opposite:{}-{}".format(*PREFIX_OPPOSITES[pair])
    return None


def _out_of_order(a: PromptDetails, b: PromptDetails) -> bool:
    pairs = ((a.numbers, b.numbers), (a.locales, b.locales), (a.units, b.units), (a.formats, b.formats))
    return not all(_in_order(x, y) for x, y in pairs) or _roles_swapped(a, b)


def _negations_differ(a: PromptDetails, b: PromptDetails) -> bool:
    """Another count of negations, unless the side with one fewer states the constraint positively ("only built-in
    modules" / "without external libraries")."""
    fewer, more = sorted((a, b), key=lambda details: details.negations)
    return more.negations - fewer.negations > (1 if fewer.restricted and not more.restricted else 0)


def _particles_opposite(a: PromptDetails, b: PromptDetails) -> bool:
    """One verb with opposite particles: "zoom in" / "zoom out", "clock in" / "clock out", "sign up" / "sign off"."""
    return any(
        frozenset((particle, other)) in PARTICLE_OPPOSITES and (verb, other) not in a.particles
        for verb, particle in a.particles - b.particles
        for other_verb, other in b.particles - a.particles
        if other_verb == verb
    )


def _differing_spans(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """What is left of each sequence once their common start and end are removed, and how long those are."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    return a[start : len(a) - end], b[start : len(b) - end], start + end


def _transposed(a: PromptDetails, b: PromptDetails) -> bool:
    """One prompt is the other with two words or spans exchanged around a frame that stays ("can a guest invite a
    member" / "can a member invite a guest"; "customers left join orders" / "orders left join customers"): who does
    what to whom changed. Not when the relation is symmetric ("A and B", "between A and B", "compare A with B"),
    nor when one prompt is in the passive voice ("does the API support batches" / "are batches supported by the
    API")."""
    left, right, _ = _differing_spans(a.sequence, b.sequence)
    if len(left) != len(right) or len(left) < 3 or sorted(left) != sorted(right) or a.passive != b.passive:
        return False
    if SYMMETRIC_LEMMAS.intersection(a.sequence) - JOINER_LEMMAS:
        return False
    for first in range(1, min(SPAN_SIZE, len(left) - 2) + 1):
        for second in range(1, min(SPAN_SIZE, len(left) - first - 1) + 1):
            middle = left[first : len(left) - second]
            if right == left[len(left) - second :] + middle + left[:first]:
                return not set(middle) <= JOINER_LEMMAS
    return False


def _equivalent(left: tuple[str, ...], right: tuple[str, ...]) -> bool:
    """Two fillers of one slot that mean the same: one spelling ("sign up" / "signup"), or an abbreviation of the
    other ("max" / "maximum", "config" / "configuration")."""
    joined_left, joined_right = "".join(left), "".join(right)
    shorter, longer = sorted((joined_left, joined_right), key=len)
    if joined_left == joined_right or (len(shorter) >= 3 and longer.startswith(shorter)):
        return True
    # A light verb and its noun are the verb: "take a backup" is "back up", "make a payment" is "pay".
    light = SLOT_EQUIVALENTS_OF.get(_canonical("make"), set())
    heavy_left = tuple(word for word in left if not SLOT_EQUIVALENTS_OF.get(word, set()) & light)
    heavy_right = tuple(word for word in right if not SLOT_EQUIVALENTS_OF.get(word, set()) & light)
    if (heavy_left, heavy_right) != (left, right) and heavy_left and heavy_right:
        return _equivalent(heavy_left, heavy_right)
    return len(left) == len(right) == 1 and bool(
        SLOT_EQUIVALENTS_OF.get(left[0], set()) & SLOT_EQUIVALENTS_OF.get(right[0], set())
    )


def _swapped_word(a: PromptDetails, b: PromptDetails) -> bool:
    """The prompts differ in one slot only (a word or a short span replaced, all else equal) by fillers not known
    to mean the same: most near-misses are such one-slot edits, and most one-word paraphrases are synonyms. A word
    that moved ("workspace ownership" / "ownership of a workspace") is a reordering, not a new filler, and the
    joiners kept for the transposition check ("with") are not fillers."""
    first = tuple(word for word in a.sequence if word not in STRUCTURE_LEMMAS)
    second = tuple(word for word in b.sequence if word not in STRUCTURE_LEMMAS)
    left, right, common = _differing_spans(first, second)
    return (
        common > 0
        and 0 < len(left) <= SLOT_SIZE
        and 0 < len(right) <= SLOT_SIZE
        and not set(left) & set(second)
        and not set(right) & set(first)
        and not _equivalent(left, right)
    )


# Each check, in order: the reason it gives and whether the two prompts' details disagree (a check may return its
# own, more precise reason).
CHECKS = (
    ("number", lambda a, b: not _numbers_agree(a, b)),
    ("operator", lambda a, b: a.operators != b.operators),
    ("identifier", _identifiers_differ),
    ("variable", lambda a, b: bool(a.variables and b.variables and a.variables != b.variables)),
    ("boolean", lambda a, b: bool(a.connectives and b.connectives and a.connectives != b.connectives)),
    ("name", lambda a, b: bool(a.schema_names and b.schema_names and a.schema_names != b.schema_names)),
    ("http-method", _http_methods_differ),
    ("locale", lambda a, b: set(a.locales) != set(b.locales)),
    ("entity", lambda a, b: a.entities != b.entities),
    ("unit", lambda a, b: bool(a.units and b.units and set(a.units) != set(b.units))),
    ("format", lambda a, b: set(a.formats) != set(b.formats)),
    ("negation", _negations_differ),
    ("opposite", _opposite_sides),
    ("opposite", _prefix_opposites),
    ("negation", _prefix_negated),
    ("opposite:particle", _particles_opposite),
    ("modal", lambda a, b: bool(a.modal and b.modal and a.modal != b.modal)),
    ("tense", lambda a, b: bool(a.tense and b.tense and (a.tense == "past") != (b.tense == "past"))),
    ("kind", _other_kind),
    ("question", lambda a, b: bool(a.question_words and b.question_words and a.question_words != b.question_words)),
    ("order", _out_of_order),
    ("order", _transposed),
    ("added-words", _clause_added),
    ("swapped-word", _swapped_word),
)


def near_miss_reasons(prompt: str, candidate: str) -> list[str]:
    """Every check that refuses the candidate for the prompt (the eval uses it to weigh each check)."""
    a, b = prompt_details(prompt), prompt_details(candidate)
    reasons = []
    for reason, disagree in CHECKS:
        found = disagree(a, b)
        if found:
            reasons.append(found if isinstance(found, str) else reason)
    return reasons


def near_miss_reason(prompt: str, candidate: str) -> str | None:
    """Why the candidate's answer must not be served for the prompt, or None when their details agree."""
    a, b = prompt_details(prompt), prompt_details(candidate)
    for reason, disagree in CHECKS:
        found = disagree(a, b)
        if found:
            return found if isinstance(found, str) else reason
    return None
