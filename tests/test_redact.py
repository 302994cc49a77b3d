"""Credentials in URIs never reach the console or MLflow: passwords before `@` and secret query
parameters are masked wherever z2h prints or logs a URI."""

from __future__ import annotations

import pytest

from pipeline import lineage
from pipeline.errors import EnvironmentProblem
from pipeline.redact import MASK, redact, redact_values


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://admin:s3cret@mlflow.internal:5000", f"http://admin:{MASK}@mlflow.internal:5000"),
        ("postgresql://z2h:p@ss@db:5432/mlflow", f"postgresql://z2h:{MASK}@db:5432/mlflow"),
        ("https://ghp_abc123@example.com/repo", f"https://{MASK}@example.com/repo"),
        (
            "https://bucket.s3.amazonaws.com/z2h?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F"
            "&X-Amz-Signature=deadbeef&X-Amz-Expires=3600",
            f"https://bucket.s3.amazonaws.com/z2h?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={MASK}"
            f"&X-Amz-Signature={MASK}&X-Amz-Expires=3600",
        ),
        (
            "https://acct.blob.core.windows.net/c?sv=2022&sig=abc%3D#frag",
            f"https://acct.blob.core.windows.net/c?sv=2022&sig={MASK}#frag",
        ),
        (
            "http://host/api?Token=t0k&access_token=a&key=k&page=2",
            f"http://host/api?Token={MASK}&access_token={MASK}&key={MASK}&page=2",
        ),
        ("sqlite:////work/.z2h/mlflow.db", "sqlite:////work/.z2h/mlflow.db"),
        ("s3://bucket/z2h", "s3://bucket/z2h"),
        ("/shared/z2h/store", "/shared/z2h/store"),
        ("databricks", "databricks"),
    ],
)
def test_uris_lose_their_secrets_and_keep_the_rest(uri: str, shown: str) -> None:
    assert redact(uri) == shown
    assert redact(shown) == shown  # idempotent


def test_uris_inside_text_and_nested_values_are_redacted() -> None:
    message = "tracking server http://u:pw@h:5000 is unreachable (<urlopen error 'http://u:pw@h:5000/health'>)"
    assert "pw" not in redact(message) and redact(message).count(f"u:{MASK}@h:5000") == 2
    run = {"tracking_uri": "http://u:pw@h:5000", "store": "s3://b/z?token=t", "seed": 7, "tags": ["https://x:y@z"]}
    assert redact_values(run) == {
        "tracking_uri": f"http://u:{MASK}@h:5000",
        "store": f"s3://b/z?token={MASK}",
        "seed": 7,
        "tags": [f"https://x:{MASK}@z"],
    }


def test_mlflow_params_tags_and_dataset_sources_are_logged_redacted(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = lineage.start_run(uri, lineage.experiment_id(uri, "redact", tmp_path / "artifacts"), "run", {})
    tracker.log_params({"run": {"tracking_uri": "http://admin:s3cret@mlflow:5000", "store": "s3://b/z?sig=abc"}})
    tracker.set_tags({"z2h.source": "https://tok3n@example.com/x"})
    tracker.log_datasets([lineage.DatasetRef("data", "f" * 20, "https://u:s3cret@host/store/data")], context="output")
    run = tracker.client.get_run(tracker.run_id)
    logged = [
        *run.data.params.values(),
        *run.data.tags.values(),
        *(d.dataset.source for d in run.inputs.dataset_inputs),
    ]
    assert not any("s3cret" in value or "abc" in value or "tok3n" in value for value in logged)
    assert run.data.params["run.tracking_uri"] == f"http://admin:{MASK}@mlflow:5000"


def test_an_unreachable_tracking_server_is_named_without_its_password() -> None:
    with pytest.raises(EnvironmentProblem) as raised:
        lineage.check_tracking("http://admin:s3cret@127.0.0.1:9")  # discard port: nothing listens
    assert "s3cret" not in str(raised.value) and f"admin:{MASK}@127.0.0.1:9" in str(raised.value)
