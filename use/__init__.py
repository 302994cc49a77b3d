"""Using trained models, outside the pipeline's DAG: `z2h chat`, `z2h sample` and `z2h serve`.

Nothing here is part of any stage, so editing it never changes a fingerprint or discards a cached
result. A model command names its model with a TARGET (`locate`: stage name, store entry, folder or
MLflow run id) within a run's `Place` (work dir, store, tracking store), loads it with its own
tokenizer (`loading`), and talks to it (`chat`, `sample`) or serves it over HTTP (`serve`: the OpenAI
API on a continuous-batching engine, `batching`). `commands` is the command-line face,
light enough to import while `z2h --help` builds its parser.
"""
