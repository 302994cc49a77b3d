"""Code every stage shares: the tokenizer every stage reads text through, and the token-shard format."""
