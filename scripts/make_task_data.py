#!/usr/bin/env python3
"""Writes two small fine-tuning datasets, written for this project (no outside source):

    data/instruct.jsonl    600 Alpaca-style rows {"instruction", "input", "output"} from 12 task
                           families with short, checkable answers (exact match is meaningful).
    data/summarize.jsonl   700 rows {"document", "summary"}: short news-style reports built from
                           random structured facts in 7 domains, each with a one-sentence summary.

    python3 scripts/make_task_data.py

Standard library only, fixed seed, stable iteration order: two runs give byte-identical files.
Entities are drawn independently per example (and capitals, antonyms and plurals use each table
entry at most once), so a held-out split recombines entities rather than copying training rows.
"""
import json
import os
import random

SEED = 20240611
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
DATA = os.path.join(ROOT, "data")

# ---------------------------------------------------------------------------------------------
# Shared vocabulary
# ---------------------------------------------------------------------------------------------

COUNTRIES = [
    ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
    ("Chile", "Santiago"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Cuba", "Havana"),
    ("Canada", "Ottawa"), ("India", "New Delhi"), ("China", "Beijing"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Portugal", "Lisbon"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"), ("Hungary", "Budapest"), ("Czechia", "Prague"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Ukraine", "Kyiv"), ("Russia", "Moscow"), ("Turkey", "Ankara"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Israel", "Jerusalem"), ("Jordan", "Amman"), ("Saudi Arabia", "Riyadh"),
    ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"), ("Nepal", "Kathmandu"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"), ("South Korea", "Seoul"), ("Mongolia", "Ulaanbaatar"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"), ("Brazil", "Brasilia"), ("Colombia", "Bogota"),
    ("Venezuela", "Caracas"), ("Ecuador", "Quito"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
    ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Iceland", "Reykjavik"),
]

ANTONYMS = [
    ("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("light", "dark"),
    ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("happy", "sad"),
    ("old", "young"), ("wet", "dry"), ("high", "low"), ("long", "short"), ("rich", "poor"),
    ("strong", "weak"), ("thick", "thin"), ("loud", "quiet"), ("clean", "dirty"), ("asleep", "awake"),
    ("cheap", "expensive"), ("safe", "dangerous"), ("easy", "difficult"), ("inside", "outside"),
    ("above", "below"), ("before", "after"), ("win", "lose"), ("buy", "sell"), ("push", "pull"),
    ("give", "take"), ("arrive", "leave"), ("remember", "forget"), ("accept", "refuse"),
    ("increase", "decrease"), ("friend", "enemy"), ("day", "night"), ("north", "south"),
    ("east", "west"), ("first", "last"), ("true", "false"), ("wide", "narrow"), ("deep", "shallow"),
    ("sweet", "sour"), ("smooth", "rough"), ("brave", "cowardly"), ("polite", "rude"),
    ("begin", "end"), ("question", "answer"), ("always", "never"), ("love", "hate"),
]

# (singular, plural): regular English plurals only (-s, -es, consonant+y -> -ies).
NOUNS = [
    "cat", "dog", "book", "tree", "river", "cloud", "apple", "house", "bird", "lamp", "chair",
    "table", "window", "garden", "pencil", "bottle", "doctor", "farmer", "planet", "engine",
    "box", "fox", "bus", "glass", "dish", "brush", "church", "watch", "match", "kiss",
    "wish", "bench", "class", "beach", "tax", "city", "baby", "story", "party", "lady",
    "country", "berry", "cherry", "puppy", "family", "day", "key", "toy", "boy", "road",
    "ship", "cup", "song", "lake", "bridge", "ticket", "castle", "island", "rocket", "letter",
]

WORDS = [
    "garden", "planet", "silver", "rocket", "window", "forest", "butter", "candle", "dragon",
    "pillow", "market", "orange", "purple", "winter", "summer", "bridge", "island", "castle",
    "jungle", "pepper", "magnet", "tunnel", "violin", "basket", "carpet", "turtle", "rabbit",
    "monkey", "pencil", "bottle", "jacket", "ladder", "hammer", "mirror", "cookie", "friend",
    "school", "yellow", "anchor", "circle", "flower", "spider", "tomato", "potato", "cactus",
    "desert", "harbor", "meadow", "copper", "marble", "lemon", "piano", "tiger", "zebra",
    "camel", "eagle", "horse", "cloud", "storm", "river", "stone", "apple", "bread", "chair",
    "table", "light", "night", "ocean", "train", "plant", "music", "paper", "clock", "glove",
    "honey", "sugar", "radio", "pizza", "lotus", "maple", "coral", "frost", "ember", "quilt",
    "wagon", "canoe", "badge", "crown", "grape", "kite", "moon", "star", "lamp", "boat",
    "frog", "duck", "wolf", "bear", "fish", "milk", "rain", "snow", "wind", "fire",
    "blanket", "picture", "kitchen", "morning", "evening", "captain", "dolphin", "penguin",
    "thunder", "lantern", "compass", "journey", "pyramid", "volcano", "rainbow", "blossom",
]

ADJS = [
    "quiet", "bright", "happy", "little", "golden", "gentle", "early", "green", "cold", "warm",
    "silver", "lazy", "busy", "ancient", "hidden", "crispy", "sunny", "rainy", "wild", "simple",
    "secret", "lucky", "tiny", "grand", "fresh", "northern", "sweet", "modern", "shiny", "brave",
]
PHRASE_NOUNS = [
    "morning walk", "apple pie", "river bank", "summer garden", "night train", "coffee shop",
    "music festival", "mountain road", "book club", "winter coat", "city park", "sea breeze",
    "forest trail", "kitchen table", "school trip", "paper boat", "fishing village", "birthday party",
    "market square", "garden party", "reading list", "travel guide", "picnic basket", "family dinner",
    "weekend plan", "bicycle ride", "island holiday", "science fair", "chess match", "snow day",
]

SUBJECTS = [
    "The cat", "My brother", "Our teacher", "The old man", "A small dog", "The children",
    "Her friend", "The farmer", "The baker", "My neighbour", "The pilot", "A young girl",
    "The team", "The doctor", "His sister", "The students",
]
VERBS = ["saw", "found", "painted", "carried", "wanted", "cleaned", "bought", "sold", "opened",
         "watched", "fixed", "borrowed", "dropped", "moved", "liked", "visited"]
OBJECTS = ["a red ball", "the door", "a new car", "the garden", "an old map", "the window",
           "a long letter", "the blue boat", "a big box", "the kitchen", "some bread", "the lamp",
           "a tall tree", "the small house", "a wooden chair", "the river"]
TAILS = ["", "", "yesterday", "today", "last week", "in the morning", "after lunch",
         "near the station", "with great care", "before the rain started", "on Sunday",
         "at the end of the day", "very slowly"]

YEAR_SENTENCES = [
    "The bridge was completed in {y} after {n} years of work.",
    "The school first opened its doors in {y}.",
    "In {y}, the town built its first railway station.",
    "The museum bought the painting in {y} for {m} pounds.",
    "Her grandmother moved to the coast in {y}.",
    "The band released its first album in {y}.",
    "The lighthouse was rebuilt in {y} following a storm.",
    "The company was founded in {y} by {n} friends.",
    "A new library with {m} books opened in {y}.",
    "The treaty was signed in {y} in a small village.",
    "In {y} the river flooded {n} times.",
    "The ship sailed from the harbour in {y} with {m} passengers.",
    "He won the national chess title in {y}.",
    "The park was planted with {m} trees in {y}.",
    "The theatre was closed in {y} and reopened later.",
]

# ---------------------------------------------------------------------------------------------
# Instruction families
# ---------------------------------------------------------------------------------------------


def fam_capital(rng, n):
    templates = [
        ("What is the capital of {c}?", ""),
        ("Name the capital city of {c}.", ""),
        ("Give the capital of the country below.", "{c}"),
        ("Which city is the capital of {c}?", ""),
        ("State the capital city of the given country.", "{c}"),
        ("Answer with one city name: what is the capital of {c}?", ""),
    ]
    picks = rng.sample(COUNTRIES, n)  # each country at most once
    for c, cap in picks:
        ins, inp = rng.choice(templates)
        yield ins.format(c=c), inp.format(c=c), cap


def fam_reverse(rng, n):
    templates = [
        ("Reverse the letters of the word {w}.", ""),
        ("Spell {w} backwards.", ""),
        ("Write the word below backwards.", "{w}"),
        ("What is {w} spelled in reverse?", ""),
        ("Reverse the order of the letters in this word.", "{w}"),
    ]
    for w in rng.sample(WORDS, n):
        ins, inp = rng.choice(templates)
        yield ins.format(w=w), inp.format(w=w), w[::-1]


def random_phrase(rng):
    k = rng.choice([1, 1, 2])
    adjs = rng.sample(ADJS, k)
    return " ".join(adjs + [rng.choice(PHRASE_NOUNS)])


def fam_case(rng, n):
    upper_t = [
        ("Convert the phrase to uppercase.", "{p}"),
        ("Write this phrase in capital letters.", "{p}"),
        ("Rewrite '{p}' in all capital letters.", ""),
        ("Change every letter of the text below to uppercase.", "{p}"),
    ]
    lower_t = [
        ("Convert the phrase to lowercase.", "{p}"),
        ("Write this phrase in small letters only.", "{p}"),
        ("Rewrite '{p}' in all lowercase letters.", ""),
        ("Change every letter of the text below to lowercase.", "{p}"),
    ]
    for _ in range(n * 20):
        p = random_phrase(rng)
        if rng.random() < 0.5:
            ins, inp = rng.choice(upper_t)
            src = p if rng.random() < 0.6 else p.title()
            yield ins.format(p=src), inp.format(p=src), src.upper()
        else:
            ins, inp = rng.choice(lower_t)
            src = p.upper() if rng.random() < 0.5 else p.title()
            yield ins.format(p=src), inp.format(p=src), src.lower()


def fam_letter(rng, n):
    first_t = [
        ("What is the first letter of the word {w}?", ""),
        ("Give the first letter of this word.", "{w}"),
        ("Which letter does {w} start with?", ""),
    ]
    last_t = [
        ("What is the last letter of the word {w}?", ""),
        ("Give the last letter of this word.", "{w}"),
        ("Which letter does {w} end with?", ""),
    ]
    for _ in range(n * 20):
        w = rng.choice(WORDS)
        if rng.random() < 0.5:
            ins, inp = rng.choice(first_t)
            yield ins.format(w=w), inp.format(w=w), w[0]
        else:
            ins, inp = rng.choice(last_t)
            yield ins.format(w=w), inp.format(w=w), w[-1]


def fam_count_words(rng, n):
    templates = [
        "How many words are in this sentence?",
        "Count the words in the sentence below.",
        "Give the number of words in the following sentence.",
        "Answer with a number: how many words does this sentence have?",
    ]
    for _ in range(n * 20):
        parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        tail = rng.choice(TAILS)
        if tail:
            parts.append(tail)
        s = " ".join(parts) + "."
        yield rng.choice(templates), s, str(len(s.split()))


def fam_sort(rng, n):
    templates = [
        ("Sort these numbers from smallest to largest.", True),
        ("Arrange the numbers below in ascending order.", True),
        ("Put these numbers in increasing order.", True),
        ("Sort {xs} in ascending order.", False),
    ]
    for _ in range(n * 20):
        xs = rng.sample(range(1, 100), rng.randint(3, 5))
        shown = ", ".join(str(x) for x in xs)
        ins, use_input = rng.choice(templates)
        out = ", ".join(str(x) for x in sorted(xs))
        if use_input:
            yield ins, shown, out
        else:
            yield ins.format(xs=shown), "", out


def fam_larger(rng, n):
    templates = [
        ("Which number is larger: {a} or {b}?", ""),
        ("Give the larger of the two numbers.", "{a}, {b}"),
        ("Which is bigger, {a} or {b}?", ""),
        ("Return the greater number.", "{a} and {b}"),
    ]
    for _ in range(n * 20):
        a, b = rng.sample(range(1, 500), 2)
        ins, inp = rng.choice(templates)
        yield ins.format(a=a, b=b), inp.format(a=a, b=b), str(max(a, b))


def fam_add(rng, n):
    templates = [
        ("What is {a} plus {b}?", ""),
        ("Add {a} and {b}.", ""),
        ("Compute {a} + {b}.", ""),
        ("Add the two numbers.", "{a} + {b}"),
        ("What is the sum of {a} and {b}?", ""),
    ]
    for _ in range(n * 20):
        a, b = rng.randint(1, 49), rng.randint(1, 49)
        ins, inp = rng.choice(templates)
        yield ins.format(a=a, b=b), inp.format(a=a, b=b), str(a + b)


def plural(w):
    if w.endswith("y") and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    return w + "s"


def fam_plural(rng, n):
    templates = [
        ("What is the plural of {w}?", ""),
        ("Give the plural form of this noun.", "{w}"),
        ("Write the plural of the word {w}.", ""),
        ("Turn this noun into its plural form.", "{w}"),
    ]
    for w in rng.sample(NOUNS, n):  # each noun at most once
        ins, inp = rng.choice(templates)
        yield ins.format(w=w), inp.format(w=w), plural(w)


def fam_antonym(rng, n):
    templates = [
        ("What is the opposite of {w}?", ""),
        ("Give an antonym for the word {w}.", ""),
        ("Write the opposite of this word.", "{w}"),
        ("Name the antonym of the word below.", "{w}"),
    ]
    for a, b in rng.sample(ANTONYMS, n):  # each pair at most once, one direction
        if rng.random() < 0.5:
            a, b = b, a
        ins, inp = rng.choice(templates)
        yield ins.format(w=a), inp.format(w=a), b


def fam_slug(rng, n):
    templates = [
        "Convert this title to a lowercase hyphenated slug.",
        "Turn the phrase below into a URL slug.",
        "Make a slug from this title, with words joined by hyphens.",
    ]
    for _ in range(n * 20):
        p = random_phrase(rng)
        if rng.random() < 0.3:
            p = p + " " + rng.choice(["guide", "notes", "2024", "tips", "recipe", "ideas"])
        title = p.title()
        yield rng.choice(templates), title, "-".join(p.lower().split())


def fam_year(rng, n):
    templates = [
        "Extract the year from this sentence.",
        "Which year is mentioned in the sentence below?",
        "Give the year that appears in this sentence.",
        "Answer with the year only.",
    ]
    for _ in range(n * 20):
        y = rng.randint(1800, 2023)
        s = rng.choice(YEAR_SENTENCES).format(
            y=y, n=rng.choice(["two", "three", "four", "five", "six", "seven"]),
            m=rng.choice([120, 300, 450, 800, 2000, 5000, 12000]))
        yield rng.choice(templates), s, str(y)


FAMILIES = [  # (name, generator, count); counts sum to 600
    ("capital", fam_capital, 50),
    ("reverse", fam_reverse, 50),
    ("case", fam_case, 50),
    ("letter", fam_letter, 50),
    ("count_words", fam_count_words, 50),
    ("sort", fam_sort, 50),
    ("larger", fam_larger, 50),
    ("add", fam_add, 50),
    ("plural", fam_plural, 50),
    ("antonym", fam_antonym, 45),
    ("slug", fam_slug, 55),
    ("year", fam_year, 50),
]


def make_instruct(rng):
    rows, seen = [], {}
    for name, gen, n in FAMILIES:
        got = 0
        for ins, inp, out in gen(rng, n):
            key = (ins, inp)
            if key in seen:
                continue
            seen[key] = True
            assert 1 <= len(out.split()) <= 8, (name, out)
            rows.append({"instruction": ins, "input": inp, "output": out})
            got += 1
            if got == n:
                break
        assert got == n, (name, got, n)
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------------------------------------
# Summarization
# ---------------------------------------------------------------------------------------------

TEAMS = [
    "Northbridge United", "Riverside Rovers", "Eastfield Athletic", "Kingsport City",
    "Harbour Town", "Millbrook Wanderers", "Ashford Rangers", "Westvale Albion",
    "Stonegate FC", "Redcliff Town", "Lakeside United", "Oakham Villa", "Brightwater City",
    "Fairmont Athletic", "Highmoor Rovers", "Southport Harriers", "Elmwood Town",
    "Castleton United", "Greystone City", "Pinecrest Albion", "Marshfield Rangers",
    "Silverdale FC", "Thornbury Athletic", "Windham Wanderers",
]
STADIUMS = [
    "Mill Lane", "the Riverside Ground", "Victoria Park", "the Arena", "Station Road",
    "Kingsway Stadium", "the Old Meadow", "Harbour Park", "Castle Field", "Hillside Stadium",
]
COMPANIES = [
    ("Brightline Systems", "software", "cloud services"),
    ("Corvex Industries", "industrial", "machine parts"),
    ("Halden Foods", "food", "frozen meals"),
    ("Meridian Motors", "car", "electric cars"),
    ("Novapath Labs", "biotech", "diagnostic tests"),
    ("Orbis Telecom", "telecoms", "mobile plans"),
    ("Pelican Airways", "airline", "flights"),
    ("Quartzite Energy", "energy", "solar panels"),
    ("Redwood Retail", "retail", "home goods"),
    ("Silverleaf Bank", "banking", "mortgages"),
    ("Tamber Games", "video game", "games"),
    ("Umbra Devices", "electronics", "smartphones"),
    ("Veltro Pharma", "pharmaceutical", "medicines"),
    ("Westmark Logistics", "logistics", "delivery services"),
    ("Zephyr Cycles", "bicycle", "e-bikes"),
    ("Ardent Media", "media", "streaming subscriptions"),
    ("Bluefin Seafoods", "food", "canned fish"),
    ("Crestview Hotels", "hotel", "hotel rooms"),
    ("Dunmore Steel", "steel", "steel products"),
    ("Everly Cosmetics", "cosmetics", "skin care products"),
    ("Fjord Outdoor", "outdoor clothing", "jackets"),
    ("Granite Robotics", "robotics", "warehouse robots"),
    ("Hollis Audio", "audio", "headphones"),
    ("Ironbark Tools", "tool", "power tools"),
]
CITIES = [
    "Ashford", "Brookhaven", "Carlow Bay", "Dunmere", "Eastwick", "Fallowmere", "Glenport",
    "Hartley", "Ironbridge", "Juniper Falls", "Kestrel Point", "Larkhill", "Maplewood",
    "Newhaven", "Oakridge", "Port Ellis", "Queensford", "Ravenscroft", "Saltmarsh", "Thornfield",
    "Upton Vale", "Valemont", "Westbury", "Yarrowby", "Ambleside", "Belmont", "Coldwater",
    "Deepdale", "Elmstead", "Foxley",
]
FIRST = [
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "James",
    "Kira", "Liam", "Maya", "Nikolai", "Olivia", "Pedro", "Quinn", "Rosa", "Samuel", "Tara",
    "Umar", "Vera", "Wesley", "Yuki", "Zoe", "Aisha", "Bruno", "Chloe", "Daniel", "Emeka",
]
LAST = [
    "Morgan", "Patel", "Kowalski", "Okafor", "Lindqvist", "Garcia", "Brennan", "Tanaka",
    "Fischer", "Moreau", "Novak", "Haddad", "Silva", "Jensen", "Romero", "Clarke", "Nakamura",
    "Byrne", "Costa", "Weber", "Ahmed", "Santos", "Larsen", "Rossi", "Kim", "Murphy",
    "Adeyemi", "Dubois", "Varga", "Hughes",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
STATIONS = ["Central", "Market Street", "the airport", "Harbour Road", "University",
            "Old Town", "Park Lane", "the stadium", "North Gate", "Riverside"]
COUNT_WORDS = {1: "once", 2: "twice", 3: "three times"}
GENERIC_DISTRACTORS = [
    "Local schools reopened on {day2} after a week-long holiday.",
    "Separately, the city's annual book fair is due to open next month.",
    "A charity run through the centre of {city} raised money for the local hospital last weekend.",
    "Roadworks on the main ring road are expected to continue until {month}.",
    "The city's population has grown by about {pct2} percent over the past decade.",
]


def person(rng):
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def ordinal(n):
    if 10 <= n % 100 <= 20:
        suf = "th"
    else:
        suf = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suf}"


def article(word):
    return "an" if word[0].lower() in "aeiou" else "a"


def poss(name):
    return name + ("'" if name.endswith("s") else "'s")


def money(m):
    return f"${m:,} million"


def generic(rng, **kw):
    ctx = dict(day2=rng.choice(DAYS), city=rng.choice(CITIES), month=rng.choice(MONTHS),
               pct2=rng.randint(3, 19))
    ctx.update(kw)
    return rng.choice(GENERIC_DISTRACTORS).format(**ctx)


def dom_football(rng):
    home, away = rng.sample(TEAMS, 2)
    stadium, day = rng.choice(STADIUMS), rng.choice(DAYS)
    comp = rng.choice(["league", "cup", "league", "cup quarter-final"])
    scorer, manager, rival_mgr = person(rng), person(rng), person(rng)
    if rng.random() < 0.15:
        g = rng.randint(1, 3)
        hg = ag = g
        lead = rng.choice([
            f"{home} and {away} drew {g}-{g} in a {comp} match at {stadium} on {day}.",
            f"{home} were held to a {g}-{g} draw by {away} at {stadium} on {day}.",
        ])
        goals = f"{scorer} scored for {home}, but {away} equalised {rng.randint(3, 12)} minutes from time."
        quote = f'"A point is a fair result," said {home} manager {manager}.'
        summ = rng.choice([
            f"{home} and {away} drew {g}-{g} at {stadium} on {day}, with {scorer} scoring for {home}.",
            f"{home} were held {g}-{g} by {away} in a {comp} match at {stadium} on {day}.",
            f"{away} earned a {g}-{g} draw at {home} on {day} despite a goal from {scorer}.",
        ])
        winner = home
    else:
        w, l = rng.randint(1, 5), 0
        l = rng.randint(0, w - 1)
        home_won = rng.random() < 0.6
        winner, loser = (home, away) if home_won else (away, home)
        hg, ag = (w, l) if home_won else (l, w)
        k = rng.randint(1, min(w, 3))
        lead = rng.choice([
            f"{winner} beat {loser} {w}-{l} in a {comp} match at {stadium} on {day}.",
            f"{winner} defeated {loser} {w}-{l} at {stadium} on {day}.",
            f"A {w}-{l} win over {loser} on {day} gave {winner} victory in the {comp} match at {stadium}.",
        ])
        goals = rng.choice([
            f"{scorer} scored {COUNT_WORDS[k]} for {winner}, including a goal in the {ordinal(rng.randint(5, 89))} minute.",
            f"{scorer} was on target {COUNT_WORDS[k]} for {winner}.",
        ])
        quote = rng.choice([
            f'"We deserved the win today," said {winner} manager {manager}.',
            f'{loser} manager {rival_mgr} said his side "never got going" in the first half.',
        ])
        goal_phrase = "scoring twice" if k == 2 else ("scoring a hat-trick" if k == 3 else "scoring")
        summ = rng.choice([
            f"{winner} beat {loser} {w}-{l} at {stadium} on {day}, with {scorer} {goal_phrase}.",
            f"{scorer} helped {winner} to a {w}-{l} {comp} win over {loser} on {day}.",
            f"{winner} defeated {loser} {w}-{l} in a {comp} match at {stadium} on {day}.",
        ])
    core = [goals]
    extra = [
        quote,
        f"A crowd of {rng.randint(8, 60) * 1000 + rng.randint(0, 999):,} watched the match.",
        f"The result leaves {winner} {ordinal(rng.randint(1, 20))} in the table.",
        f"{rng.choice([home, away])} had a player sent off after {rng.randint(20, 85)} minutes.",
    ]
    distract = [
        f"{stadium[0].upper() + stadium[1:]} was renovated in {rng.randint(1960, 2015)}.",
        f"{away} last won away at {home} in {rng.randint(1985, 2019)}.",
        "Ticket prices at the ground rose at the start of the season.",
        "The match was shown live on regional television.",
        f"{rng.choice(TEAMS)} play their next game on {rng.choice(DAYS)}.",
    ]
    return lead, core, extra, distract, summ


def dom_earnings(rng):
    company, sector, products = rng.choice(COMPANIES)
    quarter = rng.choice(["first", "second", "third", "fourth"])
    rev = rng.randint(40, 2400)
    pct = rng.randint(2, 35)
    up = rng.random() < 0.6
    day, ceo = rng.choice(DAYS), person(rng)
    rose = "rose" if up else "fell"
    updown = "up" if up else "down"
    lead = rng.choice([
        f"{company} reported {quarter}-quarter revenue of {money(rev)} on {day}, {updown} {pct} percent from a year earlier.",
        f"Revenue at {company} {rose} {pct} percent to {money(rev)} in the {quarter} quarter, the {sector} company said on {day}.",
        f"The {sector} company {company} said on {day} that its {quarter}-quarter revenue {rose} {pct} percent to {money(rev)}.",
    ])
    profit = max(1, rev * rng.randint(3, 18) // 100)
    core = [rng.choice([
        f"Net profit was {money(profit)}.",
        f"The company made a net profit of {money(profit)} in the period.",
    ])]
    mood = rng.choice(["strong", "steady", "weaker than expected", "better than expected"])
    extra = [
        f'Chief executive {ceo} said demand for its {products} had been {mood}.',
        f"Shares in {company} {rng.choice(['rose', 'fell'])} {rng.randint(1, 12)} percent in early trading.",
        f"The company kept its forecast for the full year unchanged.",
        f"{ceo}, the chief executive, said the company would hire more staff in {rng.choice(CITIES)}.",
    ]
    exp = rev + rng.choice([-1, 1]) * rng.randint(5, 60)
    distract = [
        f"{company} is based in {rng.choice(CITIES)} and employs about {rng.randint(2, 90) * 100:,} people.",
        f"The company was founded in {rng.randint(1900, 2012)}.",
        f"Analysts had expected revenue of about {money(max(10, exp))}.",
        "Several rival firms are due to report results next week.",
        generic(rng),
    ]
    inc = "an increase" if up else "a decrease"
    summ = rng.choice([
        f"{poss(company)} {quarter}-quarter revenue {rose} {pct} percent to {money(rev)}, the company said on {day}.",
        f"{company} reported {quarter}-quarter revenue of {money(rev)}, {updown} {pct} percent from a year earlier.",
        f"{company} posted revenue of {money(rev)} for the {quarter} quarter, {inc} of {pct} percent on last year.",
    ])
    return lead, core, extra, distract, summ


def dom_weather(rng):
    city, day = rng.choice(CITIES), rng.choice(DAYS)
    level = rng.choice(["yellow", "amber", "red", "yellow", "amber"])
    kind = rng.choice(["rain", "snow", "wind", "heat", "fog"])
    if kind == "rain":
        x = rng.randint(3, 15) * 10
        hazard, amount = "heavy rain", f"up to {x} mm of rain"
    elif kind == "snow":
        x = rng.randint(5, 40)
        hazard, amount = "snow", f"up to {x} cm of snow"
    elif kind == "wind":
        x = rng.randint(7, 14) * 10
        hazard, amount = "high winds", f"gusts of up to {x} km/h"
    elif kind == "heat":
        x = rng.randint(35, 45)
        hazard, amount = "extreme heat", f"temperatures of up to {x} degrees Celsius"
    else:
        x = rng.randint(2, 10) * 20
        hazard, amount = "dense fog", f"visibility below {x} metres"
    start = rng.randint(5, 11)
    end = rng.randint(start + 4, 23)
    fc = person(rng)
    lead = rng.choice([
        f"Forecasters issued {article(level)} {level} warning for {hazard} in {city} on {day}, with {amount} expected.",
        f"{article(level).capitalize()} {level} weather warning for {hazard} is in force in {city} on {day}, with {amount} possible.",
        f"{city} has been placed under {article(level)} {level} warning for {hazard} on {day}, as forecasters predict {amount}.",
    ])
    core = [rng.choice([f"The warning runs from {start:02d}:00 until {end:02d}:00.",
                        f"The warning is valid between {start:02d}:00 and {end:02d}:00 local time."])]
    extra = [
        rng.choice(["Residents are advised to avoid unnecessary travel.",
                    "Officials urged people to check on elderly neighbours.",
                    "Drivers were told to allow extra time for journeys."]),
        f'"Conditions could change quickly," said forecaster {fc}.',
        f"Some schools in {city} may close early, the council said.",
        f"Emergency services in {city} have extra staff on duty.",
    ]
    distract = [
        f"Last month was the {rng.choice(['driest', 'wettest', 'warmest', 'coldest'])} {rng.choice(MONTHS)} in the city since {rng.randint(1950, 2015)}.",
        f"{city} has a population of about {rng.randint(40, 900) * 1000:,}.",
        f"The city's annual marathon is scheduled for {rng.choice(MONTHS)}.",
        generic(rng, city=city),
    ]
    summ = rng.choice([
        f"{article(level).capitalize()} {level} warning for {hazard} is in force in {city} on {day}, with {amount} expected.",
        f"Forecasters warned of {hazard} in {city} on {day}, issuing {article(level)} {level} warning with {amount} possible.",
        f"{city} faces {amount} on {day} under {article(level)} {level} warning for {hazard}.",
    ])
    return lead, core, extra, distract, summ


PRODUCT_MAKERS = ["Umbra Devices", "Granite Robotics", "Brightline Systems", "Kitewell Electronics",
                  "Lumen Labs", "Norland Tech", "Pixelforge", "Solstice Gadgets", "Tidewater Devices",
                  "Vantage Home", "Corvex Industries", "Arclight Digital"]
PRODUCT_TYPES = ["smartwatch", "e-bike", "laptop", "robot vacuum cleaner", "headset",
                 "electric kettle", "tablet", "drone", "smart speaker", "electric scooter",
                 "camera", "fitness tracker"]
PRODUCT_PREFIX = ["Nova", "Aero", "Pulse", "Vista", "Echo", "Luma", "Stride", "Orbit", "Halo",
                  "Terra", "Flux", "Zenith"]


def dom_product(rng):
    company = rng.choice(PRODUCT_MAKERS)
    ptype = rng.choice(PRODUCT_TYPES)
    product = f"{rng.choice(PRODUCT_PREFIX)} {rng.randint(2, 12)}"
    price = rng.choice([49, 79, 99, 129, 149, 199, 249, 299, 399, 499, 599, 799, 999, 1299, 1499])
    month = rng.choice(MONTHS)
    city, day, exec_ = rng.choice(CITIES), rng.choice(DAYS), person(rng)
    lead = rng.choice([
        f"{company} unveiled the {product}, a new {ptype}, at an event in {city} on {day}.",
        f"On {day}, {company} launched its latest {ptype}, the {product}, in {city}.",
        f"{company} has announced the {product}, {article(ptype)} {ptype} shown to reporters in {city} on {day}.",
    ])
    core = [rng.choice([
        f"The {product} will cost ${price:,} and goes on sale in {month}.",
        f"It will be priced at ${price:,} when it reaches shops in {month}.",
    ])]
    extra = [
        f"The company says the battery lasts up to {rng.randint(6, 72)} hours.",
        f"It weighs {rng.randint(2, 30) * 50} grams, lighter than the previous model.",
        f'"This is our most ambitious product yet," said {exec_}, the company\'s head of product.',
        f"Pre-orders open {rng.choice(['next week', 'immediately', 'in two weeks'])} on the company's website.",
    ]
    distract = [
        f"{company} sold about {rng.randint(20, 900) * 1000:,} units of its previous model last year.",
        "The launch event was streamed online.",
        "Rival makers are expected to announce similar devices later this year.",
        f"The company opened a new office in {rng.choice(CITIES)} in {rng.randint(2005, 2022)}.",
        generic(rng, city=city),
    ]
    summ = rng.choice([
        f"{company} launched the {product} {ptype} in {city}, priced at ${price:,} and on sale from {month}.",
        f"{poss(company)} new {ptype}, the {product}, will cost ${price:,} when it goes on sale in {month}.",
        f"The {product}, {article(ptype)} {ptype} from {company}, goes on sale in {month} for ${price:,}.",
    ])
    return lead, core, extra, distract, summ


def dom_council(rng):
    city, day, mayor, opp = rng.choice(CITIES), rng.choice(DAYS), person(rng), person(rng)
    total = rng.randint(9, 15)
    yes = rng.randint(total // 2 + 1, total)
    no = total - yes
    amt = rng.randint(2, 80)
    pct = rng.randint(5, 40)
    action = rng.choice([
        f"spend {money(amt)} on new bike lanes",
        f"spend {money(amt)} repairing roads",
        f"build a new library costing {money(amt)}",
        f"raise parking fees by {pct} percent",
        f"cut the speed limit on residential streets to {rng.choice([20, 30, 40])} km/h",
        f"plant {rng.randint(2, 20) * 500:,} new trees",
        f"spend {money(amt)} on a new public swimming pool",
        f"extend bus services to {rng.randint(3, 9)} new neighbourhoods",
    ])
    month = rng.choice(MONTHS)
    lead = rng.choice([
        f"{city} city council voted {yes}-{no} on {day} to {action}.",
        f"Councillors in {city} agreed on {day} to {action}, by a vote of {yes} to {no}.",
        f"In a {yes}-{no} vote on {day}, {city} council approved a plan to {action}.",
    ])
    core = [f"The change is due to take effect in {month}."]
    extra = [
        f'Mayor {mayor} called the decision "long overdue".',
        f"Councillor {opp}, who voted against, said {rng.choice(['the plan had been rushed', 'residents had not been properly consulted'])}.",
        f"About {rng.randint(30, 400)} residents attended the meeting.",
        f"The proposal was first put forward {rng.randint(2, 6)} years ago.",
    ]
    distract = [
        "The council also approved the minutes of its previous meeting.",
        f"{city} last held local elections in {rng.randint(2015, 2023)}.",
        f"The council meets every other {rng.choice(DAYS)}.",
        generic(rng, city=city),
    ]
    summ = rng.choice([
        f"{city} city council voted {yes}-{no} on {day} to {action}.",
        f"Councillors in {city} agreed to {action}, by a vote of {yes} to {no}.",
        f"In a {yes}-{no} vote, {city} council decided to {action}, starting in {month}.",
    ])
    return lead, core, extra, distract, summ


FINDINGS = [
    ("a daily walk cut the risk of heart disease by {p} percent", "volunteers"),
    ("a new coating made solar panels {p} percent more efficient", "test panels"),
    ("bird numbers in local wetlands fell by {p} percent over ten years", "survey sites"),
    ("a drought-resistant strain of wheat raised yields by {p} percent", "farms"),
    ("a new battery design lasted {p} percent longer than standard cells", "battery cells"),
    ("bees near bright street lights visited {p} percent fewer flowers", "hives"),
    ("children who read daily scored {p} percent higher on vocabulary tests", "pupils"),
    ("a cheap water filter removed {p} percent of harmful bacteria", "water samples"),
    ("short afternoon naps improved memory scores by {p} percent", "adults"),
    ("coral reefs recovered {p} percent faster in protected areas", "reef sites"),
]


def dom_science(rng):
    city = rng.choice(CITIES)
    uni = rng.choice([f"the University of {city}", f"{city} University", f"the {city} Institute of Technology"])
    lead_name = person(rng)
    pct = rng.randint(8, 60)
    tmpl, unit = rng.choice(FINDINGS)
    finding = tmpl.format(p=pct)
    n = rng.randint(12, 400) * 10
    journal = rng.choice(["Nature Letters", "the Journal of Applied Science", "Open Biology Reports",
                          "Environmental Review", "the Medical Research Journal"])
    lead = rng.choice([
        f"Researchers at {uni} have found that {finding}.",
        f"A team led by Dr. {lead_name} at {uni} reported that {finding}.",
        f"A new study from {uni} suggests that {finding}.",
    ])
    core = [rng.choice([
        f"The study, published in {journal}, was based on data from {n:,} {unit}.",
        f"The team analysed data from {n:,} {unit} over {rng.randint(2, 10)} years.",
    ])]
    extra = [
        f'"We were surprised by the size of the effect," said Dr. {lead_name}.',
        "The authors said further work was needed to confirm the results.",
        f"The work was funded by a {money(rng.randint(1, 20))} government grant.",
        f"Independent experts called the findings {rng.choice(['promising', 'important', 'encouraging'])}.",
    ]
    distract = [
        f"{uni[0].upper() + uni[1:]} was founded in {rng.randint(1850, 1990)}.",
        f"The university has about {rng.randint(5, 45) * 1000:,} students.",
        f"A similar study in {rng.randint(2001, 2019)} reached different conclusions.",
        generic(rng, city=city),
    ]
    summ = rng.choice([
        f"Researchers at {uni} found that {finding}, in a study of {n:,} {unit}.",
        f"A study of {n:,} {unit} by {uni} found that {finding}.",
        f"According to a new study from {uni}, {finding}.",
    ])
    return lead, core, extra, distract, summ


CAUSES = ["a signal failure", "a strike by drivers", "flooding on the tracks", "a power outage",
          "a broken-down train", "a fire near the line", "damaged overhead cables"]


def dom_transport(rng):
    city, day = rng.choice(CITIES), rng.choice(DAYS)
    line = rng.choice([f"{c} Line" for c in ["Red", "Blue", "Green", "Yellow", "Orange", "Purple"]]
                      + [f"Route {r} tram" for r in (1, 3, 5, 8, 11)])
    cause = rng.choice(CAUSES)
    hours = rng.randint(2, 14)
    pax = rng.randint(5, 200) * 1000
    operator = f"{city} Transit"
    spk = person(rng)
    a, b = rng.sample(STATIONS, 2)
    lead = rng.choice([
        f"Services on the {line} in {city} were suspended for {hours} hours on {day} because of {cause}.",
        f"{cause[0].upper() + cause[1:]} halted services on the {line} in {city} for {hours} hours on {day}.",
        f"Passengers on {poss(city)} {line} faced {hours} hours of disruption on {day} after {cause}.",
    ])
    core = [f"The operator, {operator}, said about {pax:,} passengers were affected."]
    extra = [
        f"Replacement buses ran between {a} and {b}.",
        f'"We apologise to everyone whose journey was disrupted," said {spk}, a spokesperson for {operator}.',
        "Normal services resumed in the evening.",
        "Taxi ranks near the main stations reported long queues.",
    ]
    distract = [
        f"The {line} opened in {rng.randint(1900, 2010)} and has {rng.randint(8, 40)} stations.",
        f"{operator} plans to introduce new trains next year.",
        f"Fares on the network rose by {rng.randint(2, 9)} percent in January.",
        generic(rng, city=city),
    ]
    summ = rng.choice([
        f"{cause[0].upper() + cause[1:]} suspended the {line} in {city} for {hours} hours on {day}, affecting about {pax:,} passengers.",
        f"About {pax:,} passengers were affected when the {line} in {city} shut for {hours} hours on {day} due to {cause}.",
        f"The {line} in {city} was suspended for {hours} hours on {day} because of {cause}.",
    ])
    return lead, core, extra, distract, summ


DOMAINS = [  # (name, generator, count); counts sum to 700
    ("football", dom_football, 100),
    ("earnings", dom_earnings, 100),
    ("weather", dom_weather, 100),
    ("product", dom_product, 100),
    ("council", dom_council, 100),
    ("science", dom_science, 100),
    ("transport", dom_transport, 100),
]


def build_document(rng, lead, core, extra, distract):
    n_extra = rng.randint(1, min(3, len(extra)))
    n_dis = rng.randint(1, min(3, len(distract)))
    body = core + rng.sample(extra, n_extra) + rng.sample(distract, n_dis)
    rng.shuffle(body)
    # News style: the key sentence usually leads, sometimes after one background sentence.
    pos = 0 if rng.random() < 0.75 else 1
    sents = body[:pos] + [lead] + body[pos:]
    return " ".join(sents), len(sents)


def make_summarize(rng):
    rows, seen = [], {}
    for name, gen, n in DOMAINS:
        got = 0
        for _ in range(n * 50):
            lead, core, extra, distract, summ = gen(rng)
            doc, n_sents = build_document(rng, lead, core, extra, distract)
            dw, sw = len(doc.split()), len(summ.split())
            if not (4 <= n_sents <= 7 and 60 <= dw <= 140 and 10 <= sw <= 25):
                continue
            if doc in seen:
                continue
            seen[doc] = True
            rows.append({"document": doc, "summary": summ})
            got += 1
            if got == n:
                break
        assert got == n, (name, got, n)
    rng.shuffle(rows)
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")


def main():
    rng = random.Random(SEED)
    instruct = make_instruct(rng)
    summarize = make_summarize(rng)
    os.makedirs(DATA, exist_ok=True)
    write_jsonl(os.path.join(DATA, "instruct.jsonl"), instruct)
    write_jsonl(os.path.join(DATA, "summarize.jsonl"), summarize)
    print(f"wrote data/instruct.jsonl ({len(instruct)} rows), data/summarize.jsonl ({len(summarize)} rows)")


if __name__ == "__main__":
    main()
