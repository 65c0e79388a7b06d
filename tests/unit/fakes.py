"""Hand-written fakes shared by unit tests."""

from __future__ import annotations


class NoGpu:
    """An NVML without its library: no GPU series."""

    NVMLError: type[Exception] = RuntimeError

    def nvmlInit(self) -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        raise AssertionError("never started")

    def nvmlDeviceGetCount(self) -> int:
        raise AssertionError("never started")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        raise AssertionError("never started")

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> object:
        raise AssertionError("never started")

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> object:
        raise AssertionError("never started")

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> object:
        raise AssertionError("never started")
