"""Issue 14, items 1-2: a secret never reaches a record, a notebook, a table, a log line or an error message.

One mechanism (studylib.errors.redact and find_secret): parameters that carry a secret (a URL with a
password, a secret-named setting) are refused before any work with one sentence that does not repeat
it; whatever is written anyway (records, cells.json, runs.csv, executed notebooks, error text) passes
through the same redaction.
"""
import json
from pathlib import Path

import nbformat
import pytest

from studylib.data import storage
from studylib.errors import ParameterError, StudyError, find_secret, redact
from studylib.params import TrainParams
from studylib.record import Record, TuneRecord, failed_record
from studylib.stages.tune import TuneParams
from studylib.study import collect, execute, expand, manifest

PW = "hunter2-s3cret"
DB_URL = f"postgresql://optuna:{PW}@db.example:5432/study"


def test_redact_hides_every_kind_of_secret_in_text_and_structures(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY")
    text = (f"connect {DB_URL} failed; ftp://u:{PW}@host/d; "
            f"https://acct.blob.core.windows.net/c?sv=2020&sig={PW}; "
            f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={PW};EndpointSuffix=core.windows.net; "
            "signed with wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY")
    out = redact(text)
    assert PW not in out and "wJalrXUtnFEMI" not in out
    assert "postgresql://***@db.example:5432/study" in out and "AccountName=a" in out
    nested = redact({"params": {"root": f"ftp://u:{PW}@host/d", "list": [f"s3://k:{PW}@b/x"]}, "n": 3})
    assert PW not in json.dumps(nested) and nested["n"] == 3
    assert redact("s3://bucket/dogs") == "s3://bucket/dogs" and redact(["a", 1, None]) == ["a", 1, None]


def test_find_secret_names_where_the_secret_is():
    assert find_secret({"root": "s3://bucket/x", "storage_options": {"endpoint_url": "http://minio:9000"}}) is None
    assert find_secret({"storage": DB_URL}) == "storage"
    assert find_secret({"storage_options": {"connection_string": "x"}}) == "storage_options.connection_string"
    assert find_secret({"o": {"passphrase": "x"}}) == "o.passphrase"
    assert find_secret({"o": {"endpoint_url": f"http://u:{PW}@minio:9000"}}) == "o.endpoint_url"
    assert find_secret({"o": {"client_kwargs": [{"aws_secret_access_key": "x"}]}}) == "o.client_kwargs[0].aws_secret_access_key"
    assert find_secret({"root": f"https://a.blob.core.windows.net/c?sig={PW}"}) == "root"
    assert find_secret({"storage": "sqlite:///results/optuna.sqlite3?timeout=30"}) is None


def test_a_credentials_file_named_by_path_is_the_way_to_pass_one(tmp_path):
    creds = tmp_path / "service-account.json"
    creds.write_text('{"private_key": "x"}')
    assert storage.check_storage_options({"token": str(creds)}) == {"token": str(creds)}
    with pytest.raises(ParameterError, match="storage_options.token"):
        storage.check_storage_options({"token": "ya29.a0AfH6SMB-inline-oauth-token"})
    assert redact({"token": str(creds)}) == {"token": "***"}   # what a record keeps of it: not even the path


def test_a_bad_storage_scheme_does_not_echo_the_password():
    """Before: 'parameter storage is postgres://u:pw@...' went to stderr whole."""
    with pytest.raises(ParameterError) as info:
        TuneParams.from_mapping({"storage": f"postgres-typo://optuna:{PW}@db/x"})
    assert PW not in str(info.value) and "storage" in str(info.value)


def test_a_password_in_the_tune_storage_url_is_refused_before_any_work():
    with pytest.raises(ParameterError) as info:
        TuneParams.from_mapping({"storage": DB_URL})
    message = str(info.value)
    assert PW not in message and "parameter 'storage'" in message and "PGPASSWORD" in message


def test_a_train_root_with_credentials_is_refused_without_repeating_them():
    with pytest.raises(ParameterError) as info:
        TrainParams.from_mapping({"dataset": "imagefolder", "root": f"ftp://user:{PW}@host/d"})
    assert PW not in str(info.value) and "parameter 'root'" in str(info.value)


@pytest.mark.parametrize("options", [
    {"connection_string": f"DefaultEndpointsProtocol=https;AccountKey={PW}"},
    {"passphrase": PW},
    {"endpoint_url": f"http://minio:{PW}@minio.local:9000"},
    {"client_kwargs": [{"aws_secret_access_key": PW}]},
])
def test_storage_options_holding_a_secret_are_refused(options):
    with pytest.raises(ParameterError) as info:
        storage.check_storage_options(options)
    assert PW not in str(info.value) and "storage_options" in str(info.value)


def test_a_grid_file_with_a_password_stops_before_any_cell(tmp_path, study_env):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"study: leak\nstages: [tune]\ntune:\n  models: [smallvgg1]\n  storage: {DB_URL}\n")
    with pytest.raises(ParameterError) as info:
        expand.load_grid(grid)
    assert PW not in str(info.value) and "tune.storage" in str(info.value)
    assert not manifest.manifest_path("leak").exists()


def test_records_never_hold_a_secret():
    """The tune record dumped its raw params (only `storage` was redacted): the schema now redacts."""
    failed = failed_record("tune", {"storage": DB_URL}, f"OperationalError: could not connect to {DB_URL}")
    assert PW not in json.dumps(failed) and failed["params"]["storage"] == "postgresql://***@db.example:5432/study"
    # every stage's record type inherits it (the tune record is built as TuneRecord(params=...))
    assert issubclass(TuneRecord, Record)
    r = Record(run_id="tune-x", stage="tune", params={"storage": DB_URL, "fixed": {"root": f"ftp://u:{PW}@h/d"}},
               error=f"no route to {DB_URL}")
    assert PW not in r.model_dump_json() and PW not in json.dumps(r.model_dump(mode="json"))


def test_a_cell_with_a_secret_is_refused_before_papermill_writes_its_injected_cell(tmp_path, monkeypatch):
    import papermill

    def never(*args, **kwargs):
        raise AssertionError("papermill ran")
    monkeypatch.setattr(papermill, "execute_notebook", never)
    out = tmp_path / "tune" / "tune-x.ipynb"
    cell = manifest.Cell("tune", "tune-x", {"storage": DB_URL})
    result = execute.execute_cell(vars(cell), str(out), str(tmp_path), str(manifest.source_notebook("tune")))
    assert result["status"] == "failed" and PW not in json.dumps(result)
    assert "parameter 'storage'" in result["error"] and "free of secrets" in result["error"]
    written = execute.failed_path(out)
    assert written.is_file() and PW not in written.read_text()
    assert not execute.running_path(out).exists()


def test_an_executed_notebook_is_scrubbed_before_it_is_written():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"storage = '{DB_URL}'", outputs=[
        nbformat.v4.new_output("stream", text=f"connecting to {DB_URL}\n"),
        nbformat.v4.new_output("error", ename="OperationalError", evalue=DB_URL, traceback=[f"at {DB_URL}"]),
        nbformat.v4.new_output("display_data", data={"text/plain": DB_URL, "image/png": "iVBORw0KGgo="})])])
    execute.scrub_notebook(nb)
    assert PW not in nbformat.writes(nb) and nb.cells[0].outputs[2]["data"]["image/png"] == "iVBORw0KGgo="


def test_runs_csv_and_records_jsonl_never_hold_a_secret(tmp_path, study_env, monkeypatch):
    """A failed cell's row in runs.csv carried its raw params (a notebook written before the fix, say)."""
    book = tmp_path / "book"
    monkeypatch.setenv("STUDYLIB_BOOK", str(book))
    cell = manifest.Cell("tune", "tune-x", {"storage": "sqlite:///x.db"})
    m = manifest.Manifest("leakcheck", "grid.yaml", [cell])
    m.write()
    nb = nbformat.v4.new_notebook()
    nb.metadata["studylib"] = {"cell": vars(cell), "execution": {},
                               "record": {"run_id": "tune-x", "stage": "tune", "status": "failed",
                                          "params": {"storage": DB_URL}, "error": f"could not connect to {DB_URL}"}}
    path = execute.failed_path(book / cell.notebook)
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    collect.collect("leakcheck", quiet=True)
    out = collect.study_dir("leakcheck")
    assert "tune-x" in (out / "runs.csv").read_text()
    assert PW not in (out / "runs.csv").read_text() and PW not in (out / "records.jsonl").read_text()


def test_the_manifest_never_holds_a_secret(study_env):
    m = manifest.Manifest("leakmanifest", "grid.yaml", [manifest.Cell("tune", "tune-y", {"storage": DB_URL})])
    m.write()
    assert PW not in Path(m.path).read_text()


def test_study_errors_are_redacted():
    assert PW not in str(StudyError(f"could not list {DB_URL}"))
