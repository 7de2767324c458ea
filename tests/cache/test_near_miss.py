"""The near-miss guard, class by class: a detail that changes the answer refuses, a rewording is served.

These examples are written apart from bench/cache_pairs.jsonl (the set the guard is tuned on) and from any
held-out set, so a rule that only fits those pairs fails here. The prompts are lower-cased as the cache normalises them.
"""

import pytest

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
}

# Test groups whose reason has another name.
EXPECTED_REASON = {
    "negation-except": "negation",
    "condition-order": "order",
    "shape-or-function": "entity",
}

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
]


@pytest.mark.parametrize(
    ("reason", "stored", "asked"),
    [(reason, stored, asked) for reason, pairs in REFUSED.items() for stored, asked in pairs],
)
def test_a_detail_that_changes_the_answer_refuses_the_candidate(reason, stored, asked):
    got = near_miss_reason(normalize_prompt(asked), normalize_prompt(stored))
    assert got is not None, f"served {asked!r} the answer to {stored!r}"
    assert got.split(":")[0] == EXPECTED_REASON.get(reason, reason) or (
        reason in ("ordinal", "version") and got in ("number", "identifier")
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
