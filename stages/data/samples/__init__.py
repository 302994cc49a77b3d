"""The embedded default corpus: real text from pip packages, packed into WARC files with planted junk."""
