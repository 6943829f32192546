"""The load tests' request mix and measurement helpers, without a server."""

import csv
import io
import random

import pytest
from PIL import Image

from loadtests.results import Level, Recorder, check_local, median_engines, median_level, plot, table, write_csv
from loadtests.traffic import PHOTOS, Traffic, photo_files, photo_traffic, realistic_traffic, resized_jpeg

PNG = b"\x89PNG\r\n\x1a\n"


def test_bundled_photos_are_real_jpegs():
    photos = photo_files(PHOTOS)
    assert len(photos) == 4
    for path in photos:
        assert Image.open(path).format == "JPEG"


def test_photo_files_needs_photos(tmp_path):
    with pytest.raises(ValueError, match="no .jpg"):
        photo_files(tmp_path)


def test_resized_jpeg_sets_the_long_side():
    data = photo_files(PHOTOS)[0].read_bytes()
    for side in (100, 2048):
        img = Image.open(io.BytesIO(resized_jpeg(data, side)))
        assert img.format == "JPEG" and max(img.size) == side and img.mode == "RGB"


def test_realistic_traffic_covers_sizes_batches_and_malformed():
    traffic = realistic_traffic(
        photo_files(PHOTOS)[:2], sizes=(100, 640), batch_images=3, batch_share=0.3, malformed_share=0.1
    )
    assert len(traffic.singles) == 4 and {p.images for p in traffic.singles} == {1}
    assert {p.label for p in traffic.singles} == {"single 100px", "single 640px"}
    assert traffic.batches and all(p.images == 3 and b'name="images"' in p.body for p in traffic.batches)
    assert {(p.status, p.reason) for p in traffic.malformed} >= {
        (400, "not_an_image"),
        (400, "corrupt_image"),
        (400, "empty"),
        (415, "unsupported_media_type"),
    }
    rng = random.Random(0)
    drawn = [traffic.pick(rng) for _ in range(5000)]
    shares = {
        kind: sum(p in getattr(traffic, kind) for p in drawn) / len(drawn)
        for kind in ("singles", "batches", "malformed")
    }
    assert shares["malformed"] == pytest.approx(0.1, abs=0.02)
    assert shares["batches"] == pytest.approx(0.3, abs=0.03)


def test_shares_must_fit():
    with pytest.raises(ValueError, match="between 0 and 1"):
        realistic_traffic(photo_files(PHOTOS)[:1], sizes=(100,), batch_share=0.8, malformed_share=0.5)


def test_photo_traffic_sends_photos_unchanged():
    photos = photo_files(PHOTOS)
    traffic = photo_traffic(photos, field="images")
    assert isinstance(traffic, Traffic) and not traffic.batches and not traffic.malformed
    payload = traffic.pick(random.Random(0))
    assert b'name="images"' in payload.body and payload.content_type.startswith("multipart/form-data; boundary=")
    assert any(p.read_bytes() in payload.body for p in photos)


def test_photo_traffic_can_send_each_photo_at_several_sizes():
    photos = photo_files(PHOTOS)[:2]
    traffic = photo_traffic(photos, sizes=(100, 1280))
    assert len(traffic.singles) == 4
    sizes = sorted(max(Image.open(io.BytesIO(_file_part(p.body))).size) for p in traffic.singles)
    assert sizes == [100, 100, 1280, 1280]


def _file_part(body: bytes) -> bytes:
    """The file in a one-file multipart body."""
    return body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]


def test_recorder_counts_images_and_failures():
    recorder = Recorder()
    for ms in range(1, 101):
        recorder.on_request(response_time=float(ms), exception=None, context={"images": 2})
    recorder.on_request(response_time=500.0, exception=RuntimeError("HTTP 500"), context={"images": 1})
    level = recorder.level(users=4, seconds=10.0)
    assert (level.requests, level.failures) == (101, 1)
    assert level.images_per_s == pytest.approx(20.0) and level.requests_per_s == pytest.approx(10.0)
    assert level.p50_ms == pytest.approx(51.0) and level.max_ms == 500.0
    assert "HTTP 500" in level.failure_examples


@pytest.mark.parametrize("host", ["http://127.0.0.1:3000", "http://localhost:8080/", "http://[::1]:3000"])
def test_local_hosts_are_accepted(host):
    assert check_local(host) == host.rstrip("/")


@pytest.mark.parametrize("host", ["http://example.com", "http://10.0.0.1:3000", "ftp://127.0.0.1", "127.0.0.1:3000"])
def test_other_hosts_are_refused(host):
    with pytest.raises(ValueError, match="only http://127.0.0.1"):
        check_local(host)


def _level(users, images_per_s, p99):
    return Level(
        users=users,
        seconds=10,
        requests=100,
        failures=0,
        images_per_s=images_per_s,
        requests_per_s=images_per_s,
        p50_ms=p99 / 2,
        p99_ms=p99,
        max_ms=p99,
    )


def test_csv_and_plot(tmp_path):
    series = {"ours": [_level(1, 10, 200), _level(4, 30, 400)], "reference": [_level(1, 5, 300), _level(4, 8, 900)]}
    rows = list(csv.DictReader(write_csv(series, tmp_path / "s.csv").open()))
    assert [(r["series"], r["users"]) for r in rows] == [
        ("ours", "1"),
        ("ours", "4"),
        ("reference", "1"),
        ("reference", "4"),
    ]
    assert plot(series, tmp_path / "s.png", "title").read_bytes().startswith(PNG)


def test_benchmark_table_ratios_and_targets():
    engines = {
        "images_per_s": {
            "torch": {"1": 9.0, "16": 10.0},
            "onnx": {"1": 16.0, "16": 16.5},
            "onnx-int8": {"1": 30.0, "16": 34.0},
        },
        "int8_top1_agreement": 0.995,
        "photos": 398,
    }
    results = {
        "ours (onnx)": [_level(16, 15.5, 1500)],
        "ours (onnx-int8)": [_level(16, 26.0, 900)],
        "reference": [_level(16, 7.5, 2500)],
    }
    text, targets = table(engines, results)
    assert "| ours (onnx) | 16 | 15.5 | 750 | 1500 | 0 | 2.07 | 0.60 |" in text
    assert "| onnx-int8 | 30.0 | 34.0 |" in text
    assert any(t.startswith("[met]") and "94% of the best raw fp32 engine" in t for t in targets)
    assert any(t.startswith("[met]") and "2.07x reference" in t for t in targets)
    assert any(
        t.startswith("[MISSED]")
        and "ours (onnx-int8) at 16 clients: 3.47x" in t
        and "its raw engine alone is 4.53x" in t
        for t in targets
    )
    assert any(t.startswith("[met]") and "99.5%" in t for t in targets)


def test_rounds_combine_into_medians_sums_and_the_worst_latency():
    rounds = [_level(8, 10.0, 400), _level(8, 30.0, 900), _level(8, 12.0, 500)]
    rounds[1] = Level(**{**vars(rounds[1]), "failures": 2, "failure_examples": "HTTP 500", "max_ms": 5000})
    combined = median_level(rounds)
    assert (combined.users, combined.images_per_s, combined.p99_ms, combined.p50_ms) == (8, 12.0, 500, 250)
    assert (combined.requests, combined.failures, combined.seconds, combined.max_ms) == (300, 2, 30, 5000)
    assert combined.failure_examples == "HTTP 500"
    with pytest.raises(ValueError):
        median_level([_level(8, 1, 1), _level(16, 1, 1)])


def test_raw_engine_rounds_combine_into_medians():
    runs = [{"model": "m:1", "images_per_s": {"onnx": {"8": v, "16": v + 1}}} for v in (20.0, 10.0, 22.0)]
    combined = median_engines(runs)
    assert combined["images_per_s"] == {"onnx": {"8": 20.0, "16": 21.0}}
    assert combined["model"] == "m:1" and combined["rounds"] == 3


def test_the_default_configuration_is_held_to_the_best_eligible_engine_and_a_cpu_dependent_factor():
    engines = {
        "images_per_s": {
            "torch": {"16": 10.0},
            "onnx": {"16": 20.0},
            "openvino": {"16": 100.0},  # fastest, but it does not reproduce fp32: not eligible
            "openvino-int8": {"16": 50.0},
        },
        "top1_agreement_with_fp32": {"torch": 1.0, "onnx": 1.0, "openvino": 0.9, "openvino-int8": 0.995},
        "photos": 398,
    }
    results = {
        "ours (auto)": [_level(8, 20.0, 600), _level(32, 31.0, 1000)],
        "reference": [_level(8, 5.0, 1500), _level(32, 8.0, 3000)],
    }
    _, targets = table(engines, results, ["avx512_vnni"])
    assert targets[0] == (
        "[met] ours (auto) at 32 clients: 62% of the best eligible raw engine (openvino-int8, 50.0 images/s; "
        "target >= 60%)"
    )
    assert targets[1].startswith("[met] ours (auto) at 32 clients: 3.88x reference (target >= 2.5 on this CPU)")
    _, on_amx = table(engines, results, ["avx512_vnni", "amx_tile"])
    assert on_amx[1].startswith("[MISSED] ours (auto) at 32 clients: 3.88x reference (target >= 5 on this CPU)")
    assert not any("ours (auto)" in t and "fp32 engine" in t for t in targets)  # not held to the older targets
    # where the service's own measurement is known, its rule decides (here it also ruled out openvino-int8)
    _, by_service = table(engines, results, ["avx512_vnni"], chosen="onnx", eligible=["torch", "onnx"])
    assert by_service[0].startswith("[met] ours (auto) at 32 clients: 155% of the best eligible raw engine (onnx, 20.0")


def test_the_default_configuration_against_the_peers():
    engines = {"images_per_s": {"onnx": {"16": 20.0}}, "top1_agreement_with_fp32": {"onnx": 1.0}, "photos": 3}
    results = {
        "ours (auto)": [_level(32, 30.0, 1000)],
        "reference": [_level(32, 10.0, 3000)],
        "torchserve": [_level(32, 12.0, 2500)],
        "triton (onnx)": [_level(32, 20.0, 900)],  # faster than half of ours, and a lower p99
        "triton (openvino-int8)": [_level(32, 32.0, 800)],
    }
    _, targets = table(engines, results, [], chosen="openvino-int8")
    assert "[met] ours (auto) at 32 clients: 2.50x torchserve (target >= 2) with p99 1000 vs 2500 ms" in targets[2]
    assert targets[3].startswith("[MISSED] ours (auto) at 32 clients: 1.50x triton (onnx) (target >= 2)")
    assert (
        targets[4] == "[met] ours (auto) at 32 clients: 0.94x triton (openvino-int8), the same engine (target >= 0.9)"
    )
    assert targets[5] == "[met] failed requests: none (target: none)"
    broken = {**results, "torchserve": [Level(**{**vars(results["torchserve"][0]), "failures": 3})]}
    assert table(engines, broken, [], chosen="openvino-int8")[1][5] == (
        "[MISSED] failed requests: {'torchserve': 3} (target: none)"
    )


def test_cpu_per_image_outside_the_engine_is_held_to_five_ms():
    """The server's CPU per image less its engine's calls in the same round, the median over rounds; the engine
    alone is shown beside it."""
    engines = {
        "images_per_s": {"onnx-int8": {"1": 50.0, "16": 80.0}},
        "cpu_ms_per_image": {"onnx-int8": {"1": 30.0, "16": 22.0}},
        "top1_agreement_with_fp32": {"onnx-int8": 1.0},
    }

    def measured(cpu, engine):
        outside = None if cpu is None or engine is None else cpu - engine
        fields = {"cpu_ms_per_image": cpu, "engine_cpu_ms_per_image": engine, "outside_engine_ms_per_image": outside}
        return Level(**{**vars(_level(32, 50.0, 900)), **fields})

    rounds = [measured(31.0, 24.0), measured(26.5, 21.0), measured(30.0, 26.0), measured(None, None)]
    combined = median_level(rounds)
    assert (combined.cpu_ms_per_image, combined.engine_cpu_ms_per_image) == (30.0, 24.0)  # the rounds measured
    assert combined.outside_engine_ms_per_image == 5.5  # per round 7.0, 5.5, 4.0: not 30.0 - 24.0
    text, targets = table(engines, {"ours (auto)": [combined]}, [], chosen="onnx-int8")
    line = next(t for t in targets if "outside the engine" in t)
    assert line.startswith("[MISSED] ours (auto) at 32 clients: 5.5 ms of CPU per image outside the engine")
    assert "30.0 in the server, 24.0 in its engine's calls; less onnx-int8 alone at batch 16, 22.0: 8.0" in line
    assert "| 30.0 | 24.0 |" in text
    lean = Level(**{**vars(combined), "outside_engine_ms_per_image": 4.8})
    lean_targets = table(engines, {"ours (auto)": [lean]}, [], chosen="onnx-int8")[1]
    assert next(t for t in lean_targets if "outside" in t).startswith("[met] ours (auto) at 32 clients: 4.8 ms")
    named = {"ours (auto)": [combined], "ours (onnx-int8)": [Level(**{**vars(combined), "users": 16}), lean]}
    (int8,) = [t for t in table(engines, named, [], chosen="onnx-int8")[1] if t.startswith("[met] ours (onnx-int8)")]
    assert int8.startswith("[met] ours (onnx-int8) at 32 clients: 4.8 ms of CPU per image outside the engine")
    unmeasured = median_level([measured(31.0, None)])  # e.g. its /metrics could not be read
    assert not any("outside" in t for t in table(engines, {"ours (auto)": [unmeasured]}, [], chosen="onnx-int8")[1])
