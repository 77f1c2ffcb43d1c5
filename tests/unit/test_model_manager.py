"""The model manager with small real torch modules: budget, LRU eviction, sharing, threads."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from agent.core.errors import ConfigError, ModelLoadError
from agent.core.model_manager import GIB, ModelManager, get_model_manager, model_size_bytes

LINEAR_BYTES = (256 * 256 + 256) * 4  # nn.Linear(256, 256) in float32


def linear_loader(calls: list[str] | None = None, name: str = "", delay: float = 0.0):
    def load() -> torch.nn.Module:
        if delay:
            time.sleep(delay)
        if calls is not None:
            calls.append(name)
        return torch.nn.Linear(256, 256)

    return load


def load(manager: ModelManager, key, loader, **kwargs):
    """Get a model without holding it (it may be evicted as soon as another needs the room)."""
    with manager.use(key, loader, **kwargs) as value:
        return value


def budget_for(models: float) -> dict[str, float]:
    return {"cpu": models * LINEAR_BYTES / GIB}


def test_model_size_counts_parameters_buffers_and_containers():
    module = torch.nn.BatchNorm1d(10)  # 20 parameters + 21 buffer values (running stats + counter)
    assert model_size_bytes(torch.nn.Linear(256, 256)) == LINEAR_BYTES
    assert model_size_bytes((torch.nn.Linear(256, 256), "processor")) == LINEAR_BYTES
    assert model_size_bytes(module) == 20 * 4 + 20 * 4 + 8


def test_same_key_loads_once_and_is_shared():
    manager = ModelManager()
    calls: list[str] = []
    first = load(manager, "a", linear_loader(calls, "a"), device="cpu")
    second = load(manager, "a", linear_loader(calls, "a"), device="cpu")
    assert first is second
    assert calls == ["a"] and manager.load_count["a"] == 1
    assert manager.used_bytes("cpu") == LINEAR_BYTES


def test_least_recently_used_idle_model_is_evicted_first():
    manager = ModelManager(budget_for(2.5))
    load(manager, "a", linear_loader(), device="cpu")
    load(manager, "b", linear_loader(), device="cpu")
    load(manager, "a", linear_loader(), device="cpu")  # a is now more recent than b
    load(manager, "c", linear_loader(), device="cpu")
    assert manager.evictions == ["b"]
    assert manager.loaded_keys() == ["a", "c"]
    load(manager, "d", linear_loader(), device="cpu")
    assert manager.evictions == ["b", "a"]
    assert manager.used_bytes("cpu") <= 2.5 * LINEAR_BYTES


def test_model_in_use_is_never_evicted():
    manager = ModelManager(budget_for(2.5))
    with manager.use("held", linear_loader(), device="cpu") as held:
        load(manager, "b", linear_loader(), device="cpu")
        load(manager, "c", linear_loader(), device="cpu")  # must evict b, not the held model
        assert "held" in manager and manager.evictions == ["b"]
        assert load(manager, "held", linear_loader(), device="cpu") is held


def test_no_room_when_every_model_is_in_use():
    manager = ModelManager(budget_for(1.5))
    with manager.use("held", linear_loader(), device="cpu"):
        with pytest.raises(ModelLoadError, match="in use"):
            load(manager, "other", linear_loader(), device="cpu")
    assert manager.loaded_keys() == ["held"]


def test_model_larger_than_the_budget_is_refused_before_loading():
    manager = ModelManager(budget_for(0.5))
    calls: list[str] = []
    with pytest.raises(ModelLoadError, match="raise tools.memory_budget_gb"):
        load(manager, "big", linear_loader(calls, "big"), device="cpu", size_bytes=LINEAR_BYTES)
    assert calls == []


def test_measured_size_over_budget_is_refused_after_loading():
    manager = ModelManager(budget_for(0.5))
    with pytest.raises(ModelLoadError, match="needs"):
        load(manager, "big", linear_loader(), device="cpu")
    assert manager.loaded_keys() == []


def test_budgets_are_per_device():
    manager = ModelManager({"cpu": 1.5 * LINEAR_BYTES / GIB, "meta": 1.5 * LINEAR_BYTES / GIB})

    def meta_loader():
        return torch.nn.Linear(256, 256, device="meta")

    load(manager, "cpu-model", linear_loader(), device="cpu")
    load(manager, "meta-model", meta_loader, device="meta")
    assert manager.evictions == []
    load(manager, "cpu-model-2", linear_loader(), device="cpu")
    assert manager.evictions == ["cpu-model"]
    assert "meta-model" in manager


def test_cuda_and_cuda0_share_one_budget():
    manager = ModelManager({"cuda": 4})
    assert manager.budget_bytes("cuda:0") == manager.budget_bytes("cuda") == 4 * GIB
    assert manager.budget_bytes("cuda:1") == 4 * GIB  # falls back to the device type's budget
    assert manager.budget_bytes("cpu") is None


@pytest.mark.parametrize("bad", [0, -1, "8"])
def test_bad_budget_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="memory_budget_gb"):
        ModelManager({"cpu": bad})


def test_concurrent_first_use_loads_once():
    manager = ModelManager()
    calls: list[str] = []
    results: list[torch.nn.Module] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        with manager.use("shared", linear_loader(calls, "shared", delay=0.2), device="cpu") as model:
            results.append(model)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert calls == ["shared"]
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_concurrent_different_keys_stay_within_budget():
    manager = ModelManager(budget_for(3.5))
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(5):
                load(manager, f"m{(index + round_) % 6}", linear_loader(delay=0.01), device="cpu")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert manager.used_bytes("cpu") <= 3.5 * LINEAR_BYTES


def test_failed_load_is_reported_to_waiters_and_retried():
    """A thread waiting on a load another thread started gets that load's error; it does not load again."""
    manager = ModelManager()
    attempts: list[int] = []
    release = threading.Event()

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            release.wait(10)
            raise OSError("weights missing")
        return torch.nn.Linear(256, 256)

    outcomes: dict[str, str] = {}

    def worker(name: str) -> None:
        try:
            load(manager, "flaky", flaky, device="cpu")
            outcomes[name] = "ok"
        except ModelLoadError as exc:
            outcomes[name] = "error" if "weights missing" in str(exc) else f"other: {exc}"

    loader = threading.Thread(target=worker, args=("loader",))
    loader.start()
    deadline = time.monotonic() + 10
    while "flaky" not in manager._loading and time.monotonic() < deadline:  # the load has started
        time.sleep(0.005)
    waiter = threading.Thread(target=worker, args=("waiter",))
    waiter.start()
    pending = manager._loading["flaky"]
    while not pending._condition._waiters and time.monotonic() < deadline:  # the waiter waits on that load
        time.sleep(0.005)
    assert pending._condition._waiters, "the second thread never waited on the first load"
    release.set()
    loader.join(10)
    waiter.join(10)
    assert outcomes == {"loader": "error", "waiter": "error"}
    assert len(attempts) == 1, "the waiter got the error instead of loading a second time"
    assert isinstance(load(manager, "flaky", flaky, device="cpu"), torch.nn.Linear)  # the next call retries
    assert len(attempts) == 2


def test_evict_and_clear_only_drop_idle_models():
    manager = ModelManager()
    load(manager, "idle", linear_loader(), device="cpu")
    with manager.use("busy", linear_loader(), device="cpu"):
        assert manager.evict("busy") is False
        manager.clear()
        assert manager.loaded_keys() == ["busy"]
    assert manager.evict("busy") is True and manager.loaded_keys() == []


def test_default_manager_is_one_per_process_and_takes_config_budgets():
    from agent.core.config import load_config

    config = load_config({"tools": {"memory_budget_gb": {"cpu": 3}}})
    manager = get_model_manager(config)
    assert manager is get_model_manager()
    assert manager.budget_bytes("cpu") == 3 * GIB
    manager.set_budgets({})


def test_concurrent_loads_with_known_sizes_reserve_room_before_loading():
    manager = ModelManager(budget_for(2.5))
    budget = manager.budget_bytes("cpu")
    peaks: list[int] = []
    failures: list[str] = []

    def loader():
        with manager._lock:  # loaded models plus room held for loads in progress, this one included
            peaks.append(sum(e.size_bytes for e in manager._entries.values())
                         + sum(size for _, size in manager._reserved.values()))
        time.sleep(0.05)
        return torch.nn.Linear(256, 256)

    def worker(index: int) -> None:
        for round_ in range(3):
            while True:
                try:
                    load(manager, f"m{index}-{round_}", loader, device="cpu", size_bytes=LINEAR_BYTES)
                    break
                except ModelLoadError as exc:  # every model busy loading: wait and retry
                    failures.append(str(exc))
                    time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(peaks) == 12 and max(peaks) <= budget
    assert all("(loading)" in f for f in failures)


def test_weights_held_outside_torch_are_counted_by_what_they_declare():
    class Session:  # e.g. an ONNX Runtime session's encoder
        weight_bytes = 90_000_000

    assert model_size_bytes((None, Session())) == 90_000_000
    assert model_size_bytes((torch.nn.Linear(256, 256), Session())) == LINEAR_BYTES + 90_000_000
    Session.weight_bytes = True  # not a byte count
    assert model_size_bytes(Session()) == 0
