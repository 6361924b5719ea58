"""GPU (NVML) and host (psutil) telemetry: samples, snapshots and history."""
