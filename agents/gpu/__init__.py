"""GPU backends: one interface (``GpuBackend``), a real one (NVML) and a simulator."""
