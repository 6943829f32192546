import torch
from torch.utils.data import DataLoader, TensorDataset

from training.features import cache_key, cached, forward_all, load_or_extract


def test_cache_key_is_stable_and_order_independent():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})


def test_cached_computes_once_then_hits(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"features": torch.randn(2, 5, 3), "labels": torch.arange(5)}

    first, hit1 = cached(tmp_path, {"k": 1}, compute)
    second, hit2 = cached(tmp_path, {"k": 1}, compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert torch.equal(first["features"], second["features"])
    _, hit3 = cached(tmp_path, {"k": 2}, compute)
    assert hit3 is False and len(calls) == 2


def test_damaged_cache_file_is_recomputed(tmp_path):
    cached(tmp_path, {"k": 1}, lambda: {"x": torch.ones(3)})
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"garbage")
    out, hit = cached(tmp_path, {"k": 1}, lambda: {"x": torch.zeros(3)})
    assert hit is False and torch.equal(out["x"], torch.zeros(3))


def test_cache_disabled(tmp_path):
    _, hit = cached(None, {"k": 1}, lambda: {"x": torch.ones(1)})
    assert hit is False


def test_forward_all_runs_in_eval_mode():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.9), torch.nn.Linear(12, 4))
    backbone.train()
    data = TensorDataset(torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 0, 1, 1]))
    feats, labels = forward_all(backbone, DataLoader(data, batch_size=2), torch.device("cpu"), "test")
    assert feats.shape == (5, 4) and labels.tolist() == [0, 1, 0, 1, 1]
    again, _ = forward_all(backbone, DataLoader(data, batch_size=5), torch.device("cpu"), "test")
    assert torch.allclose(feats, again, atol=1e-5)  # dropout off: deterministic


class _Epochs(TensorDataset):
    """Adds the epoch to every image, like a fresh augmentation draw per view."""

    epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + self.epoch, y


def test_load_or_extract_stacks_one_view_per_epoch(tmp_path):
    data = _Epochs(torch.zeros(4, 3, 1, 1), torch.tensor([0, 1, 0, 1]))
    backbone = torch.nn.Flatten()
    key = {"k": "v"}
    feats, labels, hit = load_or_extract(
        backbone,
        DataLoader(data, batch_size=3),
        views=3,
        key=key,
        cache_dir=tmp_path,
        device=torch.device("cpu"),
        desc="t",
    )
    assert feats.shape == (3, 4, 3) and not hit and labels.tolist() == [0, 1, 0, 1]
    assert [float(feats[v].mean()) for v in range(3)] == [0.0, 1.0, 2.0]
    _, _, hit = load_or_extract(
        backbone, DataLoader(data), views=3, key=key, cache_dir=tmp_path, device=torch.device("cpu"), desc="t"
    )
    assert hit
