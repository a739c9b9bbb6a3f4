"""What a benchmark ran on: processor, accelerator, versions, peak FLOP/s."""

import os
import platform
import re
import subprocess
import sys

# Dense peak TFLOP/s from NVIDIA's datasheets: (float32 on CUDA cores,
# TF32 tensor cores, FP16/BF16 tensor cores). XLA (and so JAX) runs float32
# matrix work on TF32 tensor cores by default on Ampere and later, so
# float32 runs are held against the TF32 peak there.
GPU_PEAKS = {
    "H200": (67.0, 494.7, 989.4),
    "H100 SXM": (67.0, 494.7, 989.4),
    "H100 80GB HBM3": (67.0, 494.7, 989.4),
    "H100 PCIe": (51.0, 378.0, 756.0),
    "H100": (67.0, 494.7, 989.4),
    "A100": (19.5, 156.0, 312.0),
    "L4": (30.3, 60.0, 121.0),
    "T4": (8.1, 8.1, 65.0),
}

# Public anchors to read our figures against (issue #6, FACTS.md).
ANCHORS = [
    {
        "what": "ResNet50 training, TensorFlow, 1x A100, batch 256, TF32 + XLA",
        "images_per_s": 909,
        "source": "NVIDIA DeepLearningExamples",
    },
    {
        "what": "ResNet50 training, TensorFlow, 1x A100, batch 256, AMP + XLA",
        "images_per_s": 2375,
        "source": "NVIDIA DeepLearningExamples",
    },
    {
        "what": "ResNet50 training, MLPerf Training v3.0, per H100 GPU",
        "images_per_s": 7000,
        "source": "MLPerf Training v3.0 (about)",
    },
]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores():
    """Cores this process may run on (the affinity mask, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def _cpu_flags_and_mhz():
    flags, mhz = set(), None
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    return flags, mhz


def cpu_peak_tflops():
    """An estimate of the float32 peak: cores x clock x FLOP per cycle.

    Two FMA pipes per core are assumed: 32 float32 FLOP per cycle with
    AVX2 (and with AMD's AVX-512, which splits 512-bit work over its two
    256-bit pipes), 64 with Intel's AVX-512. `None` when the clock is not
    readable. It is an estimate: turbo clocks and thermal limits move it.
    """
    flags, mhz = _cpu_flags_and_mhz()
    if not mhz:
        return None
    if "avx512f" in flags and "AMD" not in cpu_name():
        per_cycle = 64
    elif "fma" in flags:
        per_cycle = 32
    elif "avx" in flags:
        per_cycle = 16
    else:
        per_cycle = 8
    return cpu_cores() * mhz * 1e6 * per_cycle / 1e12


def gpu_name():
    """The first NVIDIA GPU's name from `nvidia-smi`, or `None`."""
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in output.splitlines() if line.strip()]
    return names[0] if names else None


def gpu_peak_tflops(name, precision):
    """The datasheet peak for `name` at `precision`, or `None` if unknown."""
    if not name:
        return None
    for key, peaks in GPU_PEAKS.items():
        if re.search(re.escape(key), name, re.IGNORECASE):
            return peaks[1] if precision == "float32" else peaks[2]
    return None


def describe(backend):
    """The machine and software versions, as a JSON-ready dict."""
    import keras

    import mmzoo

    info = {
        "cpu": cpu_name(),
        "cores": cpu_cores(),
        "cpu_peak_float32_tflops_estimate": cpu_peak_tflops(),
        "gpu": gpu_name() if accelerator(backend) else None,
        "python": sys.version.split()[0],
        "backend": backend,
        "keras": keras.__version__,
        "mmzoo": mmzoo.__version__,
    }
    if backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    elif backend == "jax":
        import jax

        info["jax"] = jax.__version__
        info["jax_devices"] = [str(device) for device in jax.devices()]
    elif backend == "torch":
        import torch

        info["torch"] = torch.__version__
    return info


def accelerator(backend):
    """Whether `backend` computes on a GPU here."""
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def peak_tflops(backend, precision):
    """The device's peak for `precision` and where the figure comes from."""
    if accelerator(backend):
        name = gpu_name()
        peak = gpu_peak_tflops(name, precision)
        kind = "TF32" if precision == "float32" else "FP16/BF16"
        return peak, f"{name} datasheet, dense {kind}" if peak else None
    if precision != "float32":
        return None, None
    peak = cpu_peak_tflops()
    return peak, "CPU estimate: cores x clock x FLOP/cycle" if peak else None
