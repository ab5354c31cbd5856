"""Small corpora the tests write themselves, in the formats of the real ones in ../shared/corpora, so that a
contributor's clone (which has no ../shared) runs the data tests too.

Each generator writes one file in the shape of its real namesake -- the same columns, quoting, line ends and
layout -- from word lists written here (no text of the real corpora), drawn with a fixed seed, and returns the
facts a test may assert about it (how many documents, the first one, ...), counted while writing, never by the
code under test. The real corpora's facts are the figures the tests always asserted on them.

    tinyshakespeare.txt     speaker lines, speeches separated by blank lines, two triple newlines, final newline
    tinystories-sample.txt  stories in paragraphs separated by blank lines
    wizard-of-oz.txt        hard-wrapped prose: lines of at most 70 characters, no blank lines
    onelinefun.csv          "ID","Joke" with CRLF (and a few LF) line ends; quoted fields with "" and newlines
    imdb-reviews.csv        review,sentiment and ten empty trailing columns C..L; <br /><br /> inside reviews
    ArSenTD-LEV.tsv         Tweet, Country, Topic, Sentiment, Sentiment_Expression, Sentiment_Target; four
                            countries (lebanon first), duplicate tweets, quoted tweets with "" inside, links
"""
from __future__ import annotations

import csv
import io
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

# ---- word lists ------------------------------------------------------------------------------------------------

ENGLISH = """the and to of a I you my in that is not it with me be your his for this have he as so but what
thy thou him all by we will her do no our shall are on good lord if or now sir come more they then let how king
o would their here there must love make than well when yet upon know man them one may say see us which give go
hath take like heart did where was too doth speak night hear art were death blood day tell life both eyes out
sweet fair noble hand time these much such those name heaven father brother son honour can never very true
friend gentle words tongue crown peace war grace fear soul mother world hope away keep again why old head
cat dog house garden river bread wine gold silver sword night morning letter city gate road field horse ship
stay fly bear stand leave call ask find think bring hold seek send answer follow swear pray weep laugh sing
young poor rich proud wise strange dead brave great little long whole dear poor bitter cold warm quiet""".split()

SYLLABLES = ["bra", "ven", "tor", "mel", "dun", "ris", "cal", "pho", "gar", "lin", "sto", "wel", "mor", "que",
             "fan", "dil", "rok", "sab", "tum", "vex", "nol", "pri", "hast", "ger", "wyn", "ul", "ash", "ember"]

SPEAKERS = ["First Citizen", "Second Citizen", "KING OSWIN", "QUEEN ELDRA", "DUKE VARRO", "LADY MERIEL",
            "FRIAR ANSELM", "CAPTAIN BRAND", "Messenger", "All", "OLD TOBIAS", "YOUNG ROWAN"]

ARABIC = """في من على أنا انت هو هي نحن هم كان كانت بدنا بدي شو ليش كيف وين هيك هلق كتير منيح حلو
الله لبنان بيروت سوريا الشام عمان الأردن فلسطين القدس غزة الشعب الناس البلد الوطن الحكومة الرئيس الدولة
اليوم بكرا مبارح الصبح المسا الليل الحياة الحب القلب العيون الأمل الحرية السلام الحرب الدم الشهيد
كرة الفريق المباراة الدوري الجمهور هدف فوز خسارة الأخبار التلفزيون الجامعة المدرسة الطلاب الأستاذ
رمضان العيد الجمعة الصلاة المسجد الكنيسة الدين الإيمان الرحمة الخير الشر الظلم العدل الفساد الكهرباء
الماء الخبز الشغل المصاري الغلا الدولار السوق البحر الجبل الشمس المطر الشتا الصيف بحبك يا ريت والله
عم رح ما مش لا بس كمان يعني لأنو إذا لما عند مع بين بعد قبل كل شي حدا أحسن أسوأ جديد قديم كبير صغير""".split()

ARABIC_LETTERS = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max", "Anna", "Sam", "Lucy", "Tim", "Zoe", "Jack"]
ANIMALS = ["cat", "dog", "bird", "bunny", "frog", "bear", "duck", "mouse", "fox", "lamb"]
THINGS = ["ball", "box", "kite", "hat", "cup", "toy", "book", "shell", "stick", "flower", "cake", "boat"]
PLACES = ["park", "garden", "forest", "kitchen", "yard", "river", "room", "street", "barn", "beach"]
FEELINGS = ["happy", "sad", "scared", "proud", "excited", "angry", "tired", "curious"]
VERBS = ["play", "share", "jump", "run", "look", "sing", "dance", "swim", "climb", "hide"]
ADJECTIVES = ["big", "small", "red", "shiny", "soft", "old", "new", "funny", "pretty", "little"]

FILM_WORDS = """film movie plot actor acting director script scene ending story character camera music cast
performance dialogue villain hero screen sequel budget effects comedy drama horror thriller""".split()
OPINIONS = ["brilliant", "boring", "awful", "wonderful", "predictable", "moving", "silly", "gripping",
            "forgettable", "stunning", "clumsy", "charming", "dull", "clever", "terrible", "superb"]


def _pseudo_words(rng: random.Random, n: int, letters: str | None = None) -> list[str]:
    """n distinct made-up words: the rare tail a real vocabulary has (what min_frequency and <unk> act on)."""
    out: dict[str, None] = {}
    while len(out) < n:
        if letters:
            word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))
        else:
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
        out[word] = None
    return list(out)


class _Zipf:
    """Words drawn with weight 1/(rank+2): a few very common words and a long tail of rare ones."""

    def __init__(self, rng: random.Random, words: list[str]):
        self.rng, self.words = rng, words
        self.weights = [1.0 / (r + 2) for r in range(len(words))]

    def draw(self, k: int) -> list[str]:
        return self.rng.choices(self.words, self.weights, k=k)


# ---- the corpora -------------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """A corpus file and what is known about it (see REAL_FACTS for the keys of each)."""

    path: Path
    real: bool
    facts: dict = field(default_factory=dict)


def _sentence(zipf: _Zipf, rng: random.Random, lo: int, hi: int, end: str) -> str:
    words = zipf.draw(rng.randint(lo, hi))
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + end


def write_shakespeare(path: Path, target_chars: int = 260_000) -> dict:
    rng = random.Random(1)
    zipf = _Zipf(rng, ENGLISH + _pseudo_words(rng, 1500))
    speeches = [f"First Citizen:\n{_sentence(zipf, rng, 5, 9, ',')}\n{_sentence(zipf, rng, 4, 8, '.')}"]
    size = len(speeches[0])
    while size < target_chars:
        lines = [_sentence(zipf, rng, 4, 10, rng.choice([",", ",", ";", ":", "."])) for _ in range(rng.randint(1, 4))]
        lines[1:] = [ln[:1].lower() + ln[1:] if rng.random() < 0.3 else ln for ln in lines[1:]]  # prose wraps
        lines[-1] = lines[-1][:-1] + rng.choice([".", ".", "!", "?"])
        speeches.append(f"{rng.choice(SPEAKERS)}:\n" + "\n".join(lines))
        size += len(speeches[-1]) + 2
    last = speeches[-1].splitlines()[-1]
    triple = sorted(rng.sample(range(1, len(speeches) - 1), 2))  # two speeches followed by an extra blank line
    text = "".join(s + ("\n\n\n" if i in triple else "\n\n" if i < len(speeches) - 1 else "\n")
                   for i, s in enumerate(speeches))
    path.write_text(text, encoding="utf-8")
    return {"opening": speeches[0][:30], "last_line": last, "dropped_chars": len(triple) + 1,
            "contains": "Citizen"}


def write_stories(path: Path, stories: int = 400) -> dict:
    rng = random.Random(2)
    zipf = _Zipf(rng, ENGLISH + _pseudo_words(rng, 600))
    rare = _pseudo_words(rng, 300)  # made-up names and things, each in a story or two: min_frequency leaves them out
    paragraphs = []
    for i in range(stories):
        name = rng.choice(NAMES + (rare[i % len(rare):i % len(rare) + 1] if i else []))
        animal, thing, place = rng.choice(ANIMALS), rng.choice(THINGS + rare[:40]), rng.choice(PLACES)
        sentences = [f"One day, a little {animal} named {name} found a {rng.choice(ADJECTIVES)} {thing} in the {place}.",
                     f"{name} was very {rng.choice(FEELINGS)} and wanted to {rng.choice(VERBS)} with it.",
                     f'{name} said, "Can I {rng.choice(VERBS)} with the {thing}?" '
                     f'Mom smiled and said, "Yes, but be careful in the {place}."',
                     f"Then {name} saw a {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)} who wanted to {rng.choice(VERBS)} too.",
                     f"They were {rng.choice(FEELINGS)} together, and the {thing} became their favorite {rng.choice(THINGS)}."]
        middle = sentences[1:4]
        rng.shuffle(middle)
        said = " ".join(zipf.draw(rng.randint(4, 9)))  # common words, and now and then a rare one
        paragraphs.append(" ".join([sentences[0], *middle, sentences[4]][:rng.randint(3, 5)] + [f'"{said[:1].upper()}{said[1:]}!"']))
        if rng.random() < 0.5:  # a story goes on in a second paragraph
            paragraphs.append(f"At the end of the day, {name} went home. {name} learned to {rng.choice(VERBS)} "
                              f"and to {rng.choice(VERBS)} with friends.")
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return {"opening": paragraphs[0][:40], "documents": len(paragraphs)}


def write_wrapped(path: Path, paragraphs: int = 300, width: int = 70) -> dict:
    """Prose hard-wrapped at `width` (a Gutenberg book as the real file has it): no blank lines, a paragraph ends
    on a short line, sentences run across line ends."""
    rng = random.Random(3)
    zipf = _Zipf(rng, ENGLISH + _pseudo_words(rng, 400))
    lines = []
    for _ in range(paragraphs):
        line = ""
        for word in " ".join(_sentence(zipf, rng, 6, 18, rng.choice([".", ".", ";", "!"]))
                             for _ in range(rng.randint(2, 6))).split():
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"opening": lines[0][:30], "lines": len(lines), "width": width}


def _csv_row(values: list, terminator: str, **kw) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=terminator, **kw).writerow(values)
    return buf.getvalue()


def write_jokes(path: Path, jokes: int = 600) -> dict:
    rng = random.Random(4)
    zipf = _Zipf(rng, ENGLISH + _pseudo_words(rng, 300))
    templates = [
        lambda: f"I told my {rng.choice(['wife', 'boss', 'doctor', 'dog', 'neighbour'])} {_sentence(zipf, rng, 3, 7, '.').lower()} "
                f"{rng.choice(['Now', 'Then', 'Sadly'])} {rng.choice(['it', 'he', 'she'])} {rng.choice(VERBS)}s.",
        lambda: f"Why did the {rng.choice(ANIMALS)} {rng.choice(VERBS)} the {rng.choice(THINGS)}? "
                f"To {rng.choice(VERBS)} the {rng.choice(THINGS)}.",
        lambda: f'People used to {rng.choice(VERBS)} when I said "{_sentence(zipf, rng, 3, 6, "")}", '
                f"well nobody's {rng.choice(['laughing', 'smiling', 'sleeping'])} now.",
        lambda: f"Q: What do you call a {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)}?\n"
                f"A: A {rng.choice(ADJECTIVES)} {rng.choice(THINGS)}.",  # a field with a newline inside
        lambda: f"My {rng.choice(THINGS)} and I were {rng.choice(FEELINGS)} for {rng.randint(2, 40)} years. "
                f"Then we met, {rng.randint(1, 9)},{rng.randint(100, 999)} times.",
    ]
    texts = [templates[0](), templates[2]()] + [rng.choice(templates)() for _ in range(jokes - 2)]
    rows = [_csv_row(["ID", "Joke"], "\r\n", quoting=csv.QUOTE_ALL)]
    for i, joke in enumerate(texts, 1):  # numbers bare, text quoted; CRLF but for a few LF line ends
        rows.append(_csv_row([i, joke], "\n" if i % 97 == 0 else "\r\n", quoting=csv.QUOTE_NONNUMERIC))
    path.write_bytes("".join(rows).encode("utf-8"))
    return {"documents": len(texts), "second": texts[1], "opening": texts[0][:40],
            "multiline": sum("\n" in t for t in texts), "with_quotes": sum('"' in t for t in texts)}


def write_imdb(path: Path, reviews: int = 300) -> dict:
    rng = random.Random(5)
    zipf = _Zipf(rng, ENGLISH + FILM_WORDS * 3 + _pseudo_words(rng, 800))
    texts = []
    for i in range(reviews):
        paras = []
        for _ in range(rng.randint(1, 5) if i else 3):  # the first review has paragraphs: <br /> inside it
            opinion = f"The {rng.choice(FILM_WORDS)} was {rng.choice(OPINIONS)}, and the {rng.choice(FILM_WORDS)} {rng.choice(['felt', 'looked', 'was'])} {rng.choice(OPINIONS)}."
            paras.append(" ".join([opinion] + [_sentence(zipf, rng, 6, 16, rng.choice([".", ".", "!", "?"]))
                                               for _ in range(rng.randint(2, 7))]))
        texts.append("<br /><br />".join(paras))
    lines = [_csv_row(["review", "sentiment", *"CDEFGHIJKL"], "\n")]
    for text in texts:
        lines.append(_csv_row([text, rng.choice(["positive", "negative"]), *[""] * 10], "\n"))
    path.write_text("".join(lines), encoding="utf-8")
    return {"documents": len(texts), "opening": texts[0][:40], "with_html": sum("<br />" in t for t in texts)}


def write_tweets(path: Path, per_country: int = 250) -> dict:
    rng = random.Random(6)
    zipf = _Zipf(rng, ARABIC + _pseudo_words(rng, 400, ARABIC_LETTERS))
    countries = ["lebanon", "jordan", "palestine", "syria"]
    topics = ["politics", "personal", "sports", "religions", "entertainment", "news"]
    sentiments = ["negative", "neutral", "positive", "very_negative", "very_positive"]
    order = [c for c in countries for _ in range(per_country)][1:]  # per_country rows each, lebanon's first
    rng.shuffle(order)
    rows, canonical = [], []  # canonical: each row's tweet as cleaning leaves it (one space between words)
    for n, country in enumerate(["lebanon", *order]):
        if canonical and rng.random() < 0.3:  # a retweet: an earlier tweet again, sometimes spaced differently
            tweet = rng.choice(canonical)
            text = tweet.replace(" ", "  ", 1) if rng.random() < 0.5 else tweet + " "
        else:
            words = zipf.draw(rng.randint(6, 22))
            if rng.random() < 0.3:
                words.append("@" + "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(5, 10))))
            if rng.random() < 0.4:
                words.append("https://t.co/" + "".join(rng.choices(string.ascii_letters + string.digits, k=10)))
            if rng.random() < 0.1:
                words.append(rng.choice(["😂😂😂", "❤️", "🙏", "😔"]))
            tweet = " ".join(words)
            if n == 0 or rng.random() < 0.05:  # a quoted saying: the field opens with "" (one quote once read)
                tweet = f'"{" ".join(words[:4])}" . {" ".join(words[4:])}'
            text = tweet
        canonical.append(tweet)
        sentiment = rng.choice(sentiments)
        rows.append([text, country, rng.choice(topics), sentiment,
                     "none" if sentiment == "neutral" else rng.choice(["explicit", "explicit", "implicit"]),
                     rng.choice(text.split()) if sentiment != "neutral" else ""])
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["Tweet", "Country", "Topic", "Sentiment", "Sentiment_Expression", "Sentiment_Target"])
        writer.writerows(rows)
    lebanon = [c for c, r in zip(canonical, rows) if r[1] == "lebanon"]
    return {"rows": len(rows), "unique": len(set(canonical)), "lebanon_rows": len(lebanon),
            "lebanon_unique": len(set(lebanon)), "lebanon_first": rows[0][0][:12], "opening": rows[0][0][:12]}


GENERATORS = {"tinyshakespeare.txt": write_shakespeare, "tinystories-sample.txt": write_stories,
              "wizard-of-oz.txt": write_wrapped, "onelinefun.csv": write_jokes, "imdb-reviews.csv": write_imdb,
              "ArSenTD-LEV.tsv": write_tweets}

# What the tests assert about the real corpora in ../shared/corpora (the figures they always held).
REAL_FACTS = {
    "tinyshakespeare.txt": {"opening": "First Citizen:\nBefore we proceed", "last_line": "Whiles thou art waking.",
                            "dropped_chars": 3, "contains": "Citizen"},
    "tinystories-sample.txt": {"opening": "One day, a little girl named Lily found a needle"},
    "wizard-of-oz.txt": {"opening": "Dorothy lived in the midst of", "lines": 4286},
    "onelinefun.csv": {"documents": 2950, "multiline": 0, "with_quotes": 191,
                       "opening": "I just asked my husband if he remembers what today is",
                       "second": 'People used to laugh at me when I would say "I want to be a comedian", '
                                 "well nobody's laughing now."},
    "imdb-reviews.csv": {"documents": 2000, "with_html": 1144, "opening": "One of the other reviewers has mentioned"},
    "ArSenTD-LEV.tsv": {"rows": 4000, "unique": 2809, "lebanon_rows": 1000, "lebanon_unique": 673,
                        "lebanon_first": '"أنا أؤمن بأن الانسان', "opening": "أنا أؤمن بأن الانسان"},
}
