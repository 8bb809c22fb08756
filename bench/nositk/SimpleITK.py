"""Stand-in for SimpleITK on a host that lacks it (e.g. a GPU host with no package registry, where
its 50 MB wheel does not fit the files that travel): bench/gpu_jax.sh puts this folder on the path
only when `import SimpleITK` fails there. unet3d imports SimpleITK at import time (and uses its
constants as default arguments), but the benchmarks run there (training from a store, prediction
of a case already in the model's space) never call it: its constants are placeholders here, and
any function or class of it fails loudly when used."""

_MESSAGE = ("SimpleITK is not installed on this host (bench/nositk stands in for it): read, N4 "
            "and resample the cases elsewhere")


def _missing(*args, **kwargs):
    raise ImportError(_MESSAGE)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    if name.startswith("sitk"):  # constants: pixel types, interpolators
        return f"SimpleITK.{name} (missing)"
    return type(name, (), {"__init__": _missing, "__module__": __name__})
