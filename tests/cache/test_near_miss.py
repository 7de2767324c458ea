"""The near-miss guard, class by class: a detail that changes the answer refuses, a rewording is served.

These examples are written apart from bench/cache_pairs.jsonl (the set the guard is tuned on) and from any
held-out set, so a rule that only fits those pairs fails here. The prompts are lower-cased as the cache normalises them.
"""

import re

import pytest
from django.conf import settings

from routing.cache import near_miss
from routing.cache.crossenc_train import training_pairs_load
from routing.cache.keys import normalize_prompt
from routing.cache.near_miss import near_miss_reason

REFUSED = {
    "order": [
        ("How do I turn a set into a list?", "How do I turn a list into a set?"),
        ("Is Python faster than Ruby?", "Is Ruby faster than Python?"),
        ("How do I migrate from the Team plan to Enterprise?", "How do I migrate from Enterprise to the Team plan?"),
        ("What is 2 to the power of 5?", "What is 5 to the power of 2?"),
        (
            "Redirect traffic from the blue cluster to the green one",
            "Redirect traffic from the green cluster to the blue one",
        ),
        ("What is 12 divided by 4?", "What is 4 divided by 12?"),
        ("How much is 50 pounds in euros?", "How much is 50 euros in pounds?"),
        ("Convert XML to CSV", "Convert CSV to XML"),
    ],
    "number": [
        ("Can a team have 50 members?", "Can a team have 500 members?"),
        ("What is twelve percent of 300?", "What is eleven percent of 300?"),
        ("Do I get a refund after 2 weeks?", "Do I get a refund after 3 weeks?"),
    ],
    "ordinal": [
        ("Who won the second set?", "Who won the fourth set?"),
        ("Why did my 3rd payment bounce?", "Why did my 4th payment bounce?"),
        ("What happened in the Punic War II?", "What happened in the Punic War III?"),
        ("Show the first line of the file", "Show the last line of the file"),
    ],
    "version": [
        ("Is TLS 1.2 still secure?", "Is TLS 1.3 still secure?"),
        ("How do I call the v3 search endpoint?", "How do I call the v4 search endpoint?"),
        ("What's new in PHP 8?", "What's new in PHP 7?"),
        ("Does the plugin run on python3.12?", "Does the plugin run on python3.9?"),
    ],
    "operator": [
        ("Simplify 2y + 8", "Simplify 2y - 8"),
        ("What is 9 plus 4?", "What is 9 times 4?"),
        ("Filter orders where total >= 50", "Filter orders where total != 50"),
        ("Why does a *= 2 fail on a tuple?", "Why does a += 2 fail on a tuple?"),
    ],
    "http-method": [
        ("What status does a POST to /teams return?", "What status does a PUT to /teams return?"),
        ("Is PATCH idempotent?", "Is DELETE idempotent?"),
        ("Can a GET request have a body?", "Can a HEAD request have a body?"),
    ],
    "locale": [
        ("Do you have a data centre in the EU?", "Do you have a data centre in the US?"),
        ("Can invoices be issued in yen?", "Can invoices be issued in rupees?"),
        ("Translate the welcome email into Italian", "Translate the welcome email into Dutch"),
        ("What is the VAT rate for Irish customers?", "What is the VAT rate for Swiss customers?"),
    ],
    "opposite": [
        ("How do I compress a folder on Mac?", "How do I decompress a folder on Mac?"),
        ("Are leftover credits paid out in December?", "Are leftover credits rolled over in December?"),
        ("Can a manager approve an expense?", "Can a manager reject an expense?"),
        ("How do I grant admin rights?", "How do I revoke admin rights?"),
        ("Why do I have to lend my badge?", "Why do I have to borrow a badge?"),
        ("Does the quote include shipping?", "Does the quote exclude shipping?"),
        ("How do I unsubscribe from the newsletter?", "How do I subscribe to the newsletter?"),
    ],
    "entity": [
        ("How do I sync my calendar with Outlook?", "How do I sync my calendar with Gmail?"),
        ("How do I rotate logs in Kubernetes?", "How do I rotate logs in Docker?"),
        ("How far is Lisbon from Madrid?", "How far is Lisbon from Rome?"),
        ("How do I reverse a list in Kotlin?", "How do I reverse a list in Swift?"),
    ],
    "negation": [
        ("Which plans include phone support?", "Which plans don't include phone support?"),
        ("Why is my invoice never emailed?", "Why is my invoice emailed?"),
        ("How do I join a meeting without audio?", "How do I join a meeting with audio?"),
    ],
    "boolean": [
        ("Find invoices that are overdue and disputed", "Find invoices that are overdue or disputed"),
        ("What does `a && b` return in JavaScript?", "What does `a || b` return in JavaScript?"),
        ("Which trains stop in Lyon and Dijon?", "Which trains stop in Lyon or Dijon?"),
    ],
    "negation-except": [
        ("Archive every project", "Archive every project except the pinned ones"),
        ("Copy the config files", "Copy the config files apart from the secrets"),
    ],
    "condition-order": [
        (
            "What day is it in Sydney when it's Monday noon in Denver?",
            "What day is it in Denver when it's Monday noon in Sydney?",
        ),
    ],
    "name": [
        ("How do I back up the invoices table?", "How do I back up the customers table?"),
        ("What does the export endpoint return?", "What does the import endpoint return?"),
    ],
    "kind": [
        ("How do I flatten a nested list in Python?", "How do I shuffle a nested list in Python?"),
        ("What is the currency of Peru?", "What is the capital of Peru?"),
        ("How do I sum the rows of a matrix in numpy?", "How do I sum the columns of a matrix in numpy?"),
        ("Does the policy cover dental implants?", "Does the policy cover vision implants?"),
    ],
    "shape-or-function": [
        ("What is the surface area of a cone?", "What is the surface area of a pyramid?"),
        ("What is the sine of 30 degrees?", "What is the cosine of 30 degrees?"),
        ("What is the square root of 81?", "What is the logarithm of 81?"),
    ],
    "added-words": [
        ("How do I rename a workspace?", "How do I rename a workspace after the trial has expired?"),
    ],
    # A symbol named by itself (not between operands) is what the question is about.
    "symbol": [
        ("What does the * next to a field name mean?", "What does the + next to a field name mean?"),
        ("Why is there a '-' before the amount?", "Why is there a '+' before the amount?"),
        ("What does the minus sign on my balance mean?", "What does the = sign on my balance mean?"),
    ],
    # A prefix that negates the word it is glued to, hyphenated or not, either way round.
    "negation-prefix": [
        ("Is the setup fee refundable?", "Is the setup fee nonrefundable?"),
        ("Which fields are editable?", "Which fields are non-editable?"),
        ("Why is my coupon invalid?", "Why is my coupon valid?"),
        ("Is it possible to merge two invoices?", "Is it impossible to merge two invoices?"),
        ("How do I list inactive seats?", "How do I list active seats?"),
        ("Is parking at the office an allowable expense?", "Is parking at the office a disallowable expense?"),
        ("Why is this regex case-sensitive?", "Why is this regex case-insensitive?"),
        ("Are irregular shifts paid extra?", "Are regular shifts paid extra?"),
    ],
    # Roman numerals wherever they are clearly numerals, not only the common ones.
    "roman": [
        ("Write LXXVII as an ordinary number", "Write LXXIII as an ordinary number"),
        ("Who was king Louis XIV married to?", "Who was king Louis XVIII married to?"),
        ("What is in chapter XXIV of the handbook?", "What is in chapter XXVI of the handbook?"),
        ("What does MCMXC mean in a film's credits?", "What does MCMXL mean in a film's credits?"),
    ],
    # Opposite halves glued to the same word: allow/block-list, up/down-vote, in/out-bound, pre/post-, over/under-.
    "compound-opposite": [
        ("How do I add a domain to the allowlist?", "How do I add a domain to the blocklist?"),
        ("Where is the whitelist for webhooks?", "Where is the blacklist for webhooks?"),
        ("Can I see who upvoted my answer?", "Can I see who downvoted my answer?"),
        ("Which ports does inbound traffic use?", "Which ports does outbound traffic use?"),
        ("Is the commuter benefit pre-tax?", "Is the commuter benefit post-tax?"),
        ("What happens if an employee was overpaid?", "What happens if an employee was underpaid?"),
        ("Explain preorder traversal of a binary tree", "Explain postorder traversal of a binary tree"),
        ("How do I catch an integer overflow in C?", "How do I catch an integer underflow in C?"),
    ],
    # Which of all/any/none a question quantifies over.
    "quantifier": [
        ("Does every plan include SSO?", "Does any plan include SSO?"),
        ("Select rows where all values are null", "Select rows where any value is null"),
        ("Can each admin see all invoices?", "Can some admins see all invoices?"),
    ],
    # May I / must I / should I: permission, obligation and advice are different answers.
    "modal": [
        ("Can I work from home on Fridays?", "Must I work from home on Fridays?"),
        ("Do I have to enable 2FA?", "Am I allowed to enable 2FA?"),
        ("Should I rotate my API keys?", "Can I rotate my API keys?"),
    ],
    # What happened against what will happen.
    "tense": [
        ("When was the price of the Pro plan changed?", "When will the price of the Pro plan change?"),
        ("Did the outage affect EU customers?", "Will the outage affect EU customers?"),
        ("Was my card charged for the upgrade?", "Will my card be charged for the upgrade?"),
    ],
    # Periods, times of day, weekdays, months, currencies and units.
    "period": [
        ("Is the report sent weekly?", "Is the report sent daily?"),
        ("Does the backup run at 2am?", "Does the backup run at 2pm?"),
        ("Is the office open on Saturday?", "Is the office open on Sunday?"),
        ("Are bonuses paid in May?", "Are bonuses paid in June?"),
        ("Do you charge yesterday's usage or today's?", "Do you charge tomorrow's usage?"),
    ],
    "currency-or-unit": [
        ("Is the limit $500 a month?", "Is the limit €500 a month?"),
        ("Why does the request take 300ms?", "Why does the request take 300s?"),
        ("Can I upload a 20 MB file?", "Can I upload a 20 GB file?"),
        ("Is the fee £10 or more?", "Is the fee ¥10 or more?"),
    ],
    "file-type": [
        ("How do I compress a PNG?", "How do I compress a JPEG?"),
        ("Can I attach an mp4 to a ticket?", "Can I attach a mov to a ticket?"),
        ("How do I open a .docx file on Linux?", "How do I open a .xlsx file on Linux?"),
    ],
    # Opposites and alternatives named by one word each.
    "pair": [
        ("How do I make a function async in Python?", "How do I make a function sync in Python?"),
        (
            "What is the difference between an inner join and a self join?",
            "What is the difference between an outer join and a self join?",
        ),
        ("How do I write a LEFT JOIN with three tables?", "How do I write an INNER JOIN with three tables?"),
        ("How do I redirect stdout to a file?", "How do I redirect stderr to a file?"),
        ("Which plans are cheaper than Pro?", "Which plans are more expensive than Pro?"),
        ("Which approach is better for caching?", "Which approach is worse for caching?"),
        ("Why do I get logged out every hour?", "Why do I get logged in every hour?"),
        ("How do I make a shallow copy of a dict?", "How do I make a deep copy of a dict?"),
        ("Is a relative path safer here?", "Is an absolute path safer here?"),
        ("How do I push to a local branch?", "How do I push to a remote branch?"),
        ("Is the work trip domestic?", "Is the work trip international?"),
        ("How do I split a view horizontally?", "How do I split a view vertically?"),
        ("Is this theme good in dark mode?", "Is this theme good in light mode?"),
        ("Can an employer see my pay slip?", "Can an employee see my pay slip?"),
        ("Do weekend hours count as overtime?", "Do weekday hours count as overtime?"),
        ("Is the API free for students?", "Is the API paid for students?"),
        ("What is the median of a column in SQL?", "What is the sum of a column in SQL?"),
        ("Is this a TCP port?", "Is this a UDP port?"),
        ("What is the sum of a column in pandas?", "What is the average of a column in pandas?"),
        ("How do I get the max of a column in SQL?", "How do I get the sum of a column in SQL?"),
        ("How do I sort a tuple in Python?", "How do I sort a dictionary in Python?"),
        ("How do I write a UNION in SQL?", "How do I write a JOIN in SQL?"),
        ("Can I get a receipt for last month?", "Can I get an invoice for last month?"),
        ("Can I reach support by chat?", "Can I reach support by phone?"),
        ("How do I reset my username?", "How do I reset my password?"),
        ("What is the GCD of 12 and 18?", "What is the least common multiple of 12 and 18?"),
        ("Does Math.ceil return an int?", "Does Math.floor return an int?"),
        ("How do I get test mode API keys?", "How do I get live mode API keys?"),
        ("How do I revert a commit?", "How do I reset a commit?"),
        ("Why does my refresh token expire?", "Why does my access token expire?"),
        ("Is the bonus taxed?", "Is the salary taxed?"),
        ("How do I plot x against time?", "How do I plot y against time?"),
        ("Is vitamin D good for sleep?", "Is vitamin C good for sleep?"),
        ("Can I pay by card?", "Can I pay by wire?"),
        ("Is the data encrypted at rest?", "Is the data encrypted in transit?"),
        ("What is the capital of Australia?", "What is the largest city in Australia?"),
    ],
}

# Test groups whose reason has another name.
EXPECTED_REASON = {
    "negation-except": "negation",
    "condition-order": "order",
    "shape-or-function": "entity",
    "negation-prefix": "negation",
    "roman": "number",
    "compound-opposite": "opposite",
    "symbol": "operator",
}
# Test groups where any refusal reason will do: a pair can differ in more than one class.
ANY_REASON = {"quantifier", "modal", "tense", "period", "currency-or-unit", "file-type", "pair"}

SERVED = [
    ("How do I cancel my plan?", "Can you tell me how to cancel my plan?"),
    ("What are the steps to rotate an API token?", "How do I rotate an API token?"),
    ("Summarise our refund policy", "Give me a summary of our refund policy"),
    ("How do I configure the Okta integration?", "How do I set up the Okta integration?"),
    ("How do I export my invoices?", "How can I download my invoices?"),
    ("What does HTTP 503 mean?", "What does status code 503 mean?"),
    ("How can I turn on dark mode?", "How do I enable dark mode?"),
    ("What's the Postgres default port?", "What is the default port of PostgreSQL?"),
    ("How do I install python3 on Windows?", "How do I install Python 3 on Windows?"),
    ("Convert 3 miles to km", "What is 3 miles in km?"),
    ("What is 5 squared?", "What is 5^2?"),
    ("Why can't I upload a logo?", "Why am I unable to upload a logo?"),
    ("Which one is cheaper, Pro or Enterprise?", "Which is cheaper, Pro or Enterprise?"),
    ("How do I customise the invoice template?", "How do I customize invoice templates?"),
    ("What is the cancellation policy?", "What's the policy for cancelling?"),
    ("How do I undo a deletion?", "How do I undo deleting something?"),
    # Punctuation is not an operator unless it sits between operands.
    ("What is the cube root of 27?", "cbrt(27) = ?"),
    ("My card was declined twice today - what now?", "My card was declined two times today, what now?"),
    ("Why does the build fail on Windows?", "The build fails on Windows - why?"),
    # Number words, roman numerals, abbreviations and glued ids.
    ("What started WWII?", "What started World War II?"),
    ("Can I roll my 403(b) into an IRA?", "Can I roll my 403b into an IRA?"),
    ("How do I deploy a Vue.js app?", "How do I deploy a Vue app?"),
    (
        "How do I add a unique constraint on accounts.username?",
        "Add a unique constraint to the username column of the accounts table",
    ),
    # Converse forms of one question.
    ("Convert 3 hours to minutes", "How many minutes are in 3 hours?"),
    ("How many days are in a week?", "A week has how many days?"),
    # Negation said another way, and wrappers that frame the same question.
    ("How do I rebase without losing my local commits?", "How do I rebase but keep my local commits?"),
    ("Can I delete unverified accounts?", "Can I delete accounts that were not verified?"),
    ("Why do I get a segmentation fault?", "What causes a segmentation fault error?"),
    # A role noun and its "-ship"; a parameter bound to a number is its name; plural number words count.
    ("How do I hand over ownership of a project?", "How do I make another person the owner of a project?"),
    ("What is the volume of a sphere with radius 3?", "Volume of a sphere, r = 3"),
    ("Odds of rolling three fives with three dice?", "Chance of getting three fives when rolling 3 dice"),
    ("What are the chances of two heads with a pair of coins?", "Probability of two heads when tossing two coins"),
    # A wrapper, an observation ("I see ...") and an alternative set aside ("instead of") are not content.
    ("How do I export my contacts?", "Quick question: how can I export all my contacts?"),
    ("Why was I billed twice for March?", "I see two bills for March, why?"),
    ("Is there a discount for weekly delivery?", "Is there a discount if I get it weekly instead of daily?"),
    # "Doesn't go through" is failing, not a negation; "go" is a language only where it reads as one.
    ("Why did my transfer fail?", "Why didn't my transfer go through?"),
    ("Where do I go to change my avatar?", "How do I change my avatar?"),
    # Quantifiers, modals and tenses on one side only, or on the same side, agree.
    ("Can I download every invoice at once?", "Can I download all invoices at once?"),
    ("Is there any way to undo a merge?", "How do I undo a merge?"),
    ("Has my refund been processed?", "Was my refund processed?"),
    ("Can I pay by card?", "Is it possible to pay by card?"),
    ("What does a LEFT OUTER JOIN return?", "What does a LEFT JOIN return?"),
    ("What is the full list of supported browsers?", "Which browsers are supported?"),
    ("How do I allow list an IP?", "How do I add an IP to the allowlist?"),
    ("What is the mean of these numbers?", "What is the average of these numbers?"),
    ("Do unused PTO days carry over?", "Do unused vacation days carry over?"),
    ("What's the greatest common divisor of 8 and 12?", "GCD of 8 and 12"),
    ("How do I sort by date in SQL?", "How do I order by date in SQL?"),
    ("How do I undo my last commit?", "Revert the most recent commit"),
]


@pytest.mark.parametrize(
    ("reason", "stored", "asked"),
    [(reason, stored, asked) for reason, pairs in REFUSED.items() for stored, asked in pairs],
)
def test_a_detail_that_changes_the_answer_refuses_the_candidate(reason, stored, asked):
    got = near_miss_reason(normalize_prompt(asked), normalize_prompt(stored))
    assert got is not None, f"served {asked!r} the answer to {stored!r}"
    assert (
        reason in ANY_REASON
        or got.split(":")[0] == EXPECTED_REASON.get(reason, reason)
        or (reason in ("ordinal", "version") and got in ("number", "identifier"))
    )


@pytest.mark.parametrize(("stored", "asked"), SERVED)
def test_a_rewording_is_served(stored, asked):
    assert near_miss_reason(normalize_prompt(asked), normalize_prompt(stored)) is None


@pytest.mark.parametrize(
    "prompt",
    ["Where do I put my API key?", "Send us a message", "How do I get a refund?", "Can I post to the forum?"],
)
def test_english_words_that_spell_methods_or_countries_match_themselves(prompt):
    assert near_miss_reason(normalize_prompt(prompt), normalize_prompt(prompt)) is None


def test_the_guard_is_symmetric_for_swaps():
    stored, asked = "how do i encode a url", "how do i decode a url"
    assert near_miss_reason(asked, stored) == near_miss_reason(stored, asked) == "opposite:encoding"


# Structural rules: each example below is caught by the structure of the edit, not by a word in a table.
STRUCTURAL_REFUSED = [
    # Transposition: two words or spans exchanged around a frame that stays.
    ("order", "Can a viewer comment on an editor's draft?", "Can an editor comment on a viewer's draft?"),
    ("order", "Do parents inherit settings from their children?", "Do children inherit settings from their parents?"),
    (
        "order",
        "Does archiving a folder archive its documents?",
        "Does archiving a document archive its folder?",
    ),
    (
        "order",
        "Can the sales team see notes written by support agents?",
        "Can support agents see notes written by the sales team?",
    ),
    # One slot refilled by a word not known to mean the same.
    ("swapped-word", "How do I pin a message in a thread?", "How do I star a message in a thread?"),
    ("swapped-word", "Why are my tooltips flickering?", "Why are my tooltips misaligned?"),
    # A verb's particle against its opposite.
    ("opposite:particle", "Do I need to badge in at the front desk?", "Do I need to badge out at the front desk?"),
    (
        "opposite:particle",
        "Should I punch in before the shift meeting?",
        "Should I punch out before the shift meeting?",
    ),
    ("opposite:particle", "Can I check in early at the hotel?", "Can I check out early at the hotel?"),
    # Ordinals counted from the end or from here.
    ("number", "When is the final exam of the term?", "When is the first exam of the term?"),
    ("number", "Show the second-to-last entry", "Show the second entry"),
    ("number", "When is my next review?", "When is my last review?"),
    # Any shell or programming operator compares as itself.
    ("operator", "What does `make >> build.log` do?", "What does `make > build.log` do?"),
    ("operator", "What does `a | b` mean in a type hint?", "What does `a & b` mean in a type hint?"),
    ("operator", "What does `x -> y` mean in Rust?", "What does `x => y` mean in Rust?"),
    ("operator", "Why use `run.sh 2>&1 | tee out`?", "Why use `run.sh | tee out`?"),
]

STRUCTURAL_SERVED = [
    # Symmetric relations and the passive keep their answer when the two sides trade places.
    (
        "What is the difference between a mutex and a semaphore?",
        "What is the difference between a semaphore and a mutex?",
    ),
    ("Compare Redis with Memcached", "Compare Memcached with Redis"),
    ("Does the CLI support proxies?", "Are proxies supported by the CLI?"),
    ("Does the mobile app support dark mode?", "Is there dark mode support in the mobile app?"),
    # One slot refilled by an abbreviation, a light verb or a moved word is the same question.
    ("What is the maximum attachment size?", "What's the max attachment size?"),
    ("How do I make a request to the billing API?", "How do I send a request to the billing API?"),
    ("How do I back up my notes?", "How do I take a backup of my notes?"),
    ("How do I archive a board's cards?", "How do I archive the cards of a board?"),
    # A constraint stated positively on one side and by negation on the other.
    ("Can I parse YAML without third-party packages?", "Can I parse YAML using only built-in packages?"),
    ("What if I no longer have access to my phone?", "What if I lost access to my phone?"),
]


@pytest.mark.parametrize(("reason", "stored", "asked"), STRUCTURAL_REFUSED)
def test_a_structural_edit_refuses_the_candidate(reason, stored, asked):
    assert near_miss_reason(normalize_prompt(asked), normalize_prompt(stored)) == reason
    assert near_miss_reason(normalize_prompt(stored), normalize_prompt(asked)) == reason


@pytest.mark.parametrize(("stored", "asked"), STRUCTURAL_SERVED)
def test_a_structural_rewording_is_served(stored, asked):
    assert near_miss_reason(normalize_prompt(asked), normalize_prompt(stored)) is None


def _all_prompts() -> list[str]:
    """This file's prompts and the tuning pairs' (which hold most of the phrases), normalised as the cache does."""
    prompts = {prompt for pairs in REFUSED.values() for pair in pairs for prompt in pair}
    prompts |= {prompt for pair in SERVED for prompt in pair}
    prompts |= {prompt for _, *pair in STRUCTURAL_REFUSED for prompt in pair}
    prompts |= {prompt for pair in STRUCTURAL_SERVED for prompt in pair}
    prompts = {normalize_prompt(prompt) for prompt in prompts}
    tuning = training_pairs_load(settings.LLMOPS_CACHE_CROSSENC_TRAINING_PAIRS)
    return sorted(prompts | {prompt for pair in tuning for prompt in (pair.stored, pair.asked)})


def test_the_phrase_prefilter_prepares_every_prompt_as_the_substitutions_one_by_one_do(monkeypatch):
    prompts = _all_prompts()
    # Both branches are exercised: prompts that hold a phrase and prompts that hold none.
    with_phrases = [prompt for prompt in prompts if near_miss.PHRASE_ANY.search(prompt)]
    assert with_phrases and len(with_phrases) < len(prompts)
    prepared = {prompt: near_miss._prepare(prompt) for prompt in prompts}
    # A prefilter that matches everything: every substitution runs on every prompt, as before it existed.
    monkeypatch.setattr(near_miss, "PHRASE_ANY", re.compile(""))
    for prompt in prompts:
        assert near_miss._prepare(prompt) == prepared[prompt], prompt


@pytest.mark.parametrize("pattern", [r"(\w+) and \1", r"(?P<word>\w+) and (?P=word)", r"(a)?b(?(1)c|d)"])
def test_phrases_that_refer_to_a_group_cannot_be_joined(pattern):
    with pytest.raises(ValueError, match="refer to a group"):
        near_miss._phrases_joined({pattern: "both"})
