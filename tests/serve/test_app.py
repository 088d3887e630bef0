from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medtriad.errors import ConfigError
from medtriad.index import IndexStore
from medtriad.serve import create_app, serve
from medtriad.serve.app import is_loopback

from .conftest import wfdb_members, zip_bytes


@pytest.fixture(scope="module")
def store(served_index: Path) -> IndexStore:
    return IndexStore.open(served_index)


@pytest.fixture(scope="module")
def client(store: IndexStore, served_index: Path) -> TestClient:
    return TestClient(create_app(served_index, store=store))


def _row_with(store: IndexStore, *modalities: str) -> int:
    ok = np.ones(len(store), bool)
    for m in modalities:
        ok &= store.meta[f"has_{m}"].to_numpy()
    return int(np.flatnonzero(ok)[0])


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["sample_id"] for r in response.json()["results"]]


def _library_ids(store: IndexStore, k: int, **inputs) -> list[str]:
    return [h.sample_id for h in store.search(store.embed_query(**inputs), k=k)]


def test_health_reports_the_index(client: TestClient, store: IndexStore) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["studies"] == len(store)
    assert body["modalities"] == ["cxr", "ecg", "report"] and body["geometry"] == "cosine"


def test_text_search_ranks_studies_and_explains_them(client: TestClient, store: IndexStore) -> None:
    text = "Moderate cardiomegaly. Atrial fibrillation."
    response = client.post("/search", data={"text": text, "k": "5"})
    assert _ids(response) == _library_ids(store, 5, text=text)
    body = response.json()
    assert body["query"]["modalities"] == ["report"] and body["query"]["k"] == 5
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    grid = store.model.encoders["cxr"].grid
    n_ecg_tokens = store.model.encoders["ecg"].n_tokens
    cut_reports = 0
    for r in body["results"]:
        ex = r["explanation"]
        assert ("cxr_map" in ex) == r["has"]["cxr"] and ("ecg_map" in ex) == r["has"]["ecg"]
        if r["has"]["cxr"]:
            assert np.shape(ex["cxr_map"]) == tuple(grid) == np.shape(ex["cxr_relevance"])
        if r["has"]["ecg"]:
            assert len(ex["ecg_map"]) == n_ecg_tokens and len(ex["lead_importance"]) == 12
        if r["has"]["report"]:
            words = [w for w, _ in ex["words"]]
            report_words = r["report_text"].replace("[RAD]", " ").replace("[ECG]", " ").split()
            assert words == report_words  # every word, in order, markers left out
            weights = [v for _, v in ex["words"]]
            assert weights[0] is not None and all(v is None or np.isfinite(v) for v in weights)
            # the tiny encoder reads 24 tokens: words past them carry no weight, and only they
            seen = [v is not None for v in weights]
            assert seen == sorted(seen, reverse=True)
            cut_reports += not all(seen)
    assert cut_reports > 0


def test_png_upload_searches_like_the_library(client: TestClient, store: IndexStore) -> None:
    row = _row_with(store, "cxr")
    png = store.path(row, "cxr").read_bytes()
    response = client.post(
        "/search", files={"cxr": ("xray.png", png, "image/png")}, data={"k": "4"}
    )
    assert _ids(response) == _library_ids(store, 4, cxr=store.read_cxr_bytes(png))
    assert response.json()["query"]["modalities"] == ["cxr"]


def _dicom_bytes(pixels: np.ndarray) -> bytes:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("upload", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
        "DX",
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_named_png_is_read_as_dicom(client: TestClient, store: IndexStore) -> None:
    grey = np.asarray(
        Image.open(store.path(_row_with(store, "cxr"), "cxr")).convert("L"), np.float64
    )
    dicom = _dicom_bytes(np.round(grey / 255 * 4095))
    response = client.post(
        "/search", files={"cxr": ("scan.png", dicom, "image/png")}, data={"k": "3"}
    )
    assert _ids(response) == _library_ids(store, 3, cxr=store.read_cxr_bytes(dicom))


def test_zipped_wfdb_record_searches_like_the_library(
    client: TestClient, store: IndexStore
) -> None:
    header = store.path(_row_with(store, "ecg"), "ecg")
    archive = zip_bytes({f"record/{name}": data for name, data in wfdb_members(header).items()})
    response = client.post(
        "/search", files={"ecg": ("ecg.zip", archive, "application/zip")}, data={"k": "3"}
    )
    rec = store.read_ecg(header)
    assert _ids(response) == _library_ids(store, 3, ecg=rec.signal, ecg_lead_mask=rec.lead_mask)
    assert response.json()["query"]["modalities"] == ["ecg"]


def test_npy_ecg_at_its_own_rate_matches_the_wfdb_record(
    client: TestClient, store: IndexStore
) -> None:
    from medtriad.data.ecg import load_raw_ecg

    header = store.path(_row_with(store, "ecg"), "ecg")
    signal, fs, names = load_raw_ecg(header)
    assert list(names) == [
        "I",
        "II",
        "III",
        "aVR",
        "aVL",
        "aVF",
        "V1",
        "V2",
        "V3",
        "V4",
        "V5",
        "V6",
    ]
    buf = io.BytesIO()
    np.save(buf, signal.astype(np.float32))
    response = client.post(
        "/search", files={"ecg": ("x.bin", buf.getvalue())}, data={"k": "3", "ecg_fs": str(fs)}
    )
    archive = zip_bytes(wfdb_members(header))
    wfdb_response = client.post("/search", files={"ecg": ("e.zip", archive)}, data={"k": "3"})
    assert _ids(response) == _ids(wfdb_response)
    np.testing.assert_allclose(
        [r["score"] for r in response.json()["results"]],
        [r["score"] for r in wfdb_response.json()["results"]],
        atol=1e-4,
    )


def test_several_modalities_at_once(client: TestClient, store: IndexStore) -> None:
    row = _row_with(store, "cxr", "ecg")
    archive = zip_bytes(wfdb_members(store.path(row, "ecg")))
    response = client.post(
        "/search",
        files={"cxr": ("a", store.path(row, "cxr").read_bytes()), "ecg": ("b", archive)},
        data={"text": "pleural effusion", "k": "2", "explain": "false"},
    )
    body = response.json()
    assert response.status_code == 200 and sorted(body["query"]["modalities"]) == [
        "cxr",
        "ecg",
        "report",
    ]
    assert all(r["explanation"] == {} for r in body["results"])
    assert {"cxr->cxr", "ecg->ecg", "report->report"} <= set(body["results"][0]["scores"])


def test_token_is_required_when_set(store: IndexStore, served_index: Path) -> None:
    secured = TestClient(create_app(served_index, store=store, token="s3cret"))
    for response in (
        secured.post("/search", data={"text": "effusion"}),
        secured.post(
            "/search", data={"text": "effusion"}, headers={"Authorization": "Bearer wrong"}
        ),
        secured.get(f"/studies/{store.meta['sample_id'].iloc[0]}"),
    ):
        assert response.status_code == 401
        assert response.json() == {"error": "missing or invalid bearer token"}
    ok = secured.post(
        "/search", data={"text": "effusion", "k": "1"}, headers={"Authorization": "Bearer s3cret"}
    )
    assert ok.status_code == 200
    assert secured.get("/health").status_code == 200 and secured.get("/").status_code == 200


def test_oversized_uploads_get_413_json(store: IndexStore, served_index: Path) -> None:
    small = TestClient(create_app(served_index, store=store, max_upload_mb=0.05))
    big = b"\x89PNG\r\n\x1a\n" + bytes(100_000)
    response = small.post("/search", files={"cxr": ("a.png", big)})
    assert response.status_code == 413 and "larger than" in response.json()["error"]

    def chunks():  # no Content-Length: the cap must hold while the body streams
        for _ in range(20):
            yield bytes(10_000)

    streamed = small.post(
        "/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert streamed.status_code == 413 and "error" in streamed.json()


def test_non_image_named_png_is_refused_with_a_reason(client: TestClient) -> None:
    response = client.post(
        "/search", files={"cxr": ("photo.png", b"GIF89a not really", "image/png")}
    )
    assert response.status_code == 415
    assert "PNG, JPEG or DICOM" in response.json()["error"]
    broken = client.post("/search", files={"cxr": ("x.png", b"\x89PNG\r\n\x1a\n" + b"junk" * 20)})
    assert broken.status_code == 422 and broken.json()["error"].startswith("cxr:")
    text = client.post("/search", files={"ecg": ("e.zip", b"hello")})
    assert text.status_code == 415 and "WFDB" in text.json()["error"]


def test_zip_member_paths_never_leave_the_temporary_folder(
    store: IndexStore, served_index: Path, tmp_path: Path
) -> None:
    uploads = tmp_path / "a" / "b"
    uploads.mkdir(parents=True)
    app = TestClient(create_app(served_index, store=store, upload_dir=uploads))
    members = wfdb_members(store.path(_row_with(store, "ecg"), "ecg"))
    header_name = next(n for n in members if n.endswith(".hea"))
    stem = header_name[:-4]
    evil = {f"../../{name}": data for name, data in members.items()}
    evil[f"/tmp/{stem}_abs.dat"] = b"\0" * 10
    response = app.post("/search", files={"ecg": ("e.zip", zip_bytes(evil))}, data={"k": "1"})
    assert response.status_code == 200, response.text
    assert [
        p for p in tmp_path.rglob("*") if p.is_file()
    ] == []  # extracted by base name, then removed
    assert not Path(f"/tmp/{stem}_abs.dat").exists()


def test_header_naming_a_file_outside_the_zip_is_refused(
    client: TestClient, store: IndexStore
) -> None:
    members = wfdb_members(store.path(_row_with(store, "ecg"), "ecg"))
    header_name = next(n for n in members if n.endswith(".hea"))
    dat_name = header_name[:-4] + ".dat"
    members[header_name] = members[header_name].replace(dat_name.encode(), b"../../../etc/passwd")
    response = client.post("/search", files={"ecg": ("e.zip", zip_bytes(members))})
    assert response.status_code == 422 and "not in the zip" in response.json()["error"]


def test_zip_bombs_and_crowded_zips_are_refused(store: IndexStore, served_index: Path) -> None:
    from medtriad.serve.uploads import Limits

    app = TestClient(
        create_app(
            served_index, store=store, limits=Limits(max_unzipped_bytes=1 << 20, max_zip_members=4)
        )
    )
    bomb = zip_bytes({"rec.hea": b"rec 12 500 5000\n", "rec.dat": bytes(8 << 20)})
    assert len(bomb) < 100_000
    response = app.post("/search", files={"ecg": ("bomb.zip", bomb)})
    assert response.status_code == 413 and "expands" in response.json()["error"]
    crowded = zip_bytes({f"f{i}.dat": b"x" for i in range(5)})
    assert app.post("/search", files={"ecg": ("c.zip", crowded)}).status_code == 413


def test_internal_errors_are_json_without_traceback(
    client: TestClient, store: IndexStore, monkeypatch, caplog
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /srv/data")

    monkeypatch.setattr(store, "search", broken)
    response = client.post("/search", data={"text": "effusion"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert "Traceback" not in response.text and "secret" not in response.text
    assert "secret internals" in caplog.text  # logged server-side


def test_slow_requests_get_504(store: IndexStore, served_index: Path, monkeypatch) -> None:
    app = TestClient(create_app(served_index, store=store, timeout_s=0.5))
    real = store.search

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "search", slow)
    t0 = time.perf_counter()
    response = app.post("/search", data={"text": "effusion"})
    assert response.status_code == 504 and "longer than" in response.json()["error"]
    assert time.perf_counter() - t0 < 1.4


def test_bad_requests_are_json(client: TestClient) -> None:
    empty = client.post("/search", data={"k": "3"})
    assert empty.status_code == 400 and "at least one" in empty.json()["error"]
    bad_k = client.post("/search", data={"text": "x", "k": "1000"})
    assert bad_k.status_code == 422 and bad_k.json()["error"].startswith("k:")
    long = client.post("/search", data={"text": "word " * 3000})
    assert long.status_code == 413
    no_words = client.post("/search", data={"text": "... ;"})
    assert no_words.status_code == 422
    assert no_words.json() == {"error": "the query text has no words"}
    assert client.get("/nowhere").json() == {"error": "Not Found"}


def test_study_endpoints_look_ids_up(client: TestClient, store: IndexStore) -> None:
    row = _row_with(store, "cxr", "ecg")
    sid = str(store.meta["sample_id"].iloc[row])
    body = client.get(f"/studies/{sid}").json()
    assert body["sample_id"] == sid and body["report_text"] == store.meta["report_text"].iloc[row]
    assert body["cxr_url"] == f"/studies/{sid}/cxr.png" and "cxr_path" not in body
    png = client.get(f"/studies/{sid}/cxr.png")
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (256, 256)
    ecg = client.get(f"/studies/{sid}/ecg.png")
    assert Image.open(io.BytesIO(ecg.content)).size == (1000, 12 * 48)
    for bad in ("nope", "..%2F..%2Fetc%2Fpasswd", str(store.path(row, "cxr"))):
        response = client.get(f"/studies/{bad}/cxr.png")
        assert response.status_code == 404 and "error" in response.json()
    no_cxr = np.flatnonzero(
        ~store.meta["has_cxr"].to_numpy() & store.meta["cxr_path"].isna().to_numpy()
    )
    if len(no_cxr):
        missing = client.get(f"/studies/{store.meta['sample_id'].iloc[int(no_cxr[0])]}/cxr.png")
        assert missing.status_code == 404 and missing.json() == {"error": "this study has no X-ray"}


def test_page_and_docs_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    for name in ("index.html", "..%2Fapp.py", "../app.py", "missing.js"):
        assert client.get(f"/static/{name}").status_code == 404
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    form = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.org", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serving_beyond_loopback_needs_a_token(served_index: Path, monkeypatch) -> None:
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    with pytest.raises(ConfigError, match="token"):
        serve(served_index, host="0.0.0.0", port=8123)
    assert calls == []
    serve(served_index, host="0.0.0.0", port=8123, token="t")
    assert calls and calls[0]["host"] == "0.0.0.0"
