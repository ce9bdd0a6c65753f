"""No code from a weights file: what every YOLO .pt goes through before ultralytics reads it,
and the one place the platform turns a weights file into an ultralytics YOLO object.

A .pt file is a zip archive around a pickle, and unpickling runs whatever callable the pickle
names: ultralytics' default loader (`torch.load(weights_only=False)`) would run `os.system`
for a file made to call it. Two locks, each enough on its own for the files it sees:

1. `check_checkpoint` reads the pickle's opcodes (pickletools: nothing is executed) and
   refuses a file that names any global outside what a YOLO checkpoint is made of, with one
   UnsafeFileError naming the file and the global. A file that is no checkpoint at all (not
   a zip, a TorchScript archive, a broken pickle) is an InputError.
2. ultralytics' restricted loading (ULTRALYTICS_SAFE_LOAD, switched on for the whole process
   by labeling.detection.yolo_env): `torch.load(weights_only=True)` against its allow-list, and model
   yaml activations parsed without eval. It also guards the loads ultralytics makes on its own
   (training's `pretrained=`, the trainer's final validation), which never pass through 1.

    model = load_yolo(Path("runs/student/best.pt"))   # ultralytics.YOLO, or a FerlabError

ONNX files hold no pickle: onnxruntime parses them as a protobuf graph of standard operators.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import pickletools
import re
import zipfile
import zlib
from functools import cache
from pathlib import Path

from warehouse.errors import ConfigError, InputError, UnsafeFileError

ZIP_MAGIC = b"PK\x03\x04"  # what torch.load looks for to tell its zip format from the legacy one
# A YOLO checkpoint's pickle is some 100 KB (the tensors are separate records); a far larger
# one is not a YOLO model, and reading it whole would only cost memory.
MAX_PICKLE_BYTES = 64 << 20
TRUST_HINT = "load only weights you trust or export to ONNX"

# Globals a YOLO checkpoint may name besides torch's own weights_only allow-list (tensor
# rebuilders, storages, dtypes, OrderedDict) and the model classes (see `allowed_global`). The
# same set ultralytics' restricted loader accepts, legacy aliases included.
YOLO_CHECKPOINT_GLOBALS = frozenset(
    {
        # The pickled `Detect.forward` of YOLOv8/YOLO11 checkpoints. Safe only because
        # ultralytics' restricted loader maps it to a getattr limited to the non-dunder
        # attributes of nn.Module and Enum classes; `load_yolo` refuses to run without it.
        "builtins.getattr",
        "numpy.dtype",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib._local.PosixPath",
        "pathlib._local.WindowsPath",
        "ultralytics.utils.IterableSimpleNamespace",
        "ultralytics.yolo.utils.IterableSimpleNamespace",
        "ultralytics.nn.modules.block.Silence",
        "ultralytics.nn.tasks.YOLOv10DetectionModel",
        "ultralytics.utils.loss.v10DetectLoss",
    }
)
# Modules whose nn.Module subclasses are model layers, and modules whose own classes are
# training state a checkpoint may carry (losses, assigners).
LAYER_MODULES = frozenset({"torch.nn.modules", "ultralytics.nn.modules", "ultralytics.nn.tasks"})
LAYER_PACKAGES = frozenset({"torch.nn.modules", "ultralytics.nn.modules"})
CLASS_MODULES = frozenset({"ultralytics.utils.loss", "ultralytics.utils.tal", "ultralytics.nn.distill_model"})
UNRESOLVED = "?"  # a STACK_GLOBAL whose module and name are not plain strings pushed just before

_STRING_OPS = frozenset(
    {
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
    }
)
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_NO_STACK_OPS = frozenset({"PROTO", "FRAME", "MEMOIZE"}) | _MEMO_PUT_OPS


# ---- reading a pickle without running it ------------------------------------------------------
def pickle_globals(data: bytes) -> list[str]:
    """The globals ("module.name") a pickle names, in order of first appearance, read from its
    opcodes (pickletools): nothing in it runs. GLOBAL and INST carry the name in the opcode
    (Python 2 names mapped to Python 3 ones, as unpickling does);
    STACK_GLOBAL (protocol 4+) takes it from the two values below it on the stack, known here
    when those were pushed as strings or fetched from the memo, else UNRESOLVED. EXT* opcodes
    name a global through the copyreg registry: UNRESOLVED too. ValueError for a broken pickle."""
    names: dict[str, None] = {}
    recent: list[object] = []  # what each stack-changing opcode left on top, as far as known
    memo: dict[int, object] = {}
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            # Python 2 names (protocols 0-2: `__builtin__.set`), read as Python 3 ones by both
            # pickle and torch's weights_only unpickler
            module, attr = _compat_pickle.NAME_MAPPING.get((module, attr), (module, attr))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            names[f"{module}.{attr}"] = None
            recent.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            known = isinstance(module, str) and isinstance(attr, str)
            names[f"{module}.{attr}" if known else UNRESOLVED] = None
            recent.append(None)
        elif name.startswith("EXT"):
            names[UNRESOLVED] = None
            recent.append(None)
        elif name in _STRING_OPS:
            recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in _MEMO_GET_OPS:
            recent.append(memo.get(arg))
        elif name in _MEMO_PUT_OPS:
            memo[arg] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name not in _NO_STACK_OPS:
            # Anything else changes the stack in a way not followed here: what is on top is
            # unknown, so a STACK_GLOBAL right after it reads as UNRESOLVED (refused).
            recent.append(None)
        del recent[:-2]
    return list(names)


def _resolve(module: str, attr: str) -> object:
    """module.attr for a module of the trusted packages (torch, ultralytics), else None."""
    if not attr.isidentifier() or not all(part.isidentifier() for part in module.split(".")):
        return None
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


@cache
def _torch_allowed() -> frozenset[str]:
    """torch's own weights_only allow-list (tensor rebuilders, storages, dtypes, OrderedDict).
    A private torch function: where it is missing, YOLO checkpoints are refused, not let in."""
    try:
        from torch import _weights_only_unpickler

        return frozenset(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):
        return frozenset()


def allowed_global(name: str) -> bool:
    """Whether a YOLO checkpoint may name `name` ("module.attr"): torch's weights_only list,
    YOLO_CHECKPOINT_GLOBALS, nn.Module subclasses of the layer modules, and the classes defined
    in CLASS_MODULES. Functions (os.system, builtins.eval, subprocess.Popen, ...) never."""
    if name in YOLO_CHECKPOINT_GLOBALS or name in _torch_allowed():
        return True
    module, _, attr = name.rpartition(".")
    if module in LAYER_MODULES or module.rpartition(".")[0] in LAYER_PACKAGES:
        import torch

        obj = _resolve(module, attr)
        return isinstance(obj, type) and issubclass(obj, torch.nn.Module)
    if module in CLASS_MODULES:
        obj = _resolve(module, attr)
        return isinstance(obj, type) and obj.__module__ == module
    return False


def _shown(name: str) -> str:
    """A refused global as the message shows it: `os.system`, not the platform module
    `posix.system` it pickles as; only printable name characters (the name comes from the
    file), at most 80 of them."""
    if name == UNRESOLVED:
        return "a global it builds at load time"
    module, _, attr = name.rpartition(".")
    if module in ("posix", "nt"):
        name = f"os.{attr}"
    clean = re.sub(r"[^\w.<>-]", "?", name)
    return clean if len(clean) <= 80 else clean[:77] + "..."


def _refusal(path: Path, refused: list[str]) -> UnsafeFileError:
    shown = [_shown(n) for n in refused[:3]] + ([f"{len(refused) - 3} more"] if len(refused) > 3 else [])
    verb = "is" if len(refused) == 1 else "are"
    return UnsafeFileError(
        f"{path}: refused to load: it calls {', '.join(shown)}, which {verb} not part of a YOLO model; "
        f"{TRUST_HINT}"
    )


# ---- checking a .pt -----------------------------------------------------------------------------
def _not_a_checkpoint(path: Path, why: str) -> InputError:
    return InputError(
        f"{path}: not a YOLO checkpoint ({why}); give a .pt saved by ultralytics or an exported .onnx file"
    )


def check_checkpoint(path: str | Path) -> None:
    """Refuse a .pt that could run code when unpickled, before anything unpickles it.

    UnsafeFileError: its pickle names a global outside `allowed_global`. InputError: not a
    torch.save zip archive (random bytes, text, the legacy format, an empty or cut-off file),
    a TorchScript archive, no pickle in it, or a broken one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
        if head != ZIP_MAGIC:
            why = "the file is empty" if not head else "torch.save writes a zip archive and this is not one"
            raise _not_a_checkpoint(path, why)
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                raise _not_a_checkpoint(path, "a TorchScript archive, which runs its own code")
            pickles = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
            if not pickles:
                raise _not_a_checkpoint(path, "a zip archive without the data.pkl of torch.save")
            named: list[str] = []
            for info in pickles:
                if info.file_size > MAX_PICKLE_BYTES:
                    raise _not_a_checkpoint(path, f"its pickle is {info.file_size >> 20} MB")
                named += pickle_globals(archive.read(info))
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        raise _not_a_checkpoint(path, "a damaged or cut-off zip archive") from exc
    except ValueError as exc:  # pickletools on a pickle that does not parse
        if isinstance(exc, InputError):
            raise
        raise _not_a_checkpoint(path, "its pickle is damaged") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the weights file ({exc.strerror or exc})") from exc
    refused = list(dict.fromkeys(n for n in named if not allowed_global(n)))
    if refused:
        raise _refusal(path, refused)
    # Every ultralytics model is a class of ultralytics.nn.tasks (DetectionModel, ...): without
    # one the file is a bare state dict or another library's checkpoint.
    if not any(n.startswith("ultralytics.nn.tasks.") for n in named):
        raise _not_a_checkpoint(path, "it holds no ultralytics model, e.g. only a state dict")


# ---- loading --------------------------------------------------------------------------------------
def require_restricted_loading() -> None:
    """ConfigError unless ultralytics loads .pt files through its restricted loader (turned on
    by labeling.detection.yolo_env.prepare_ultralytics_offline): the allow-list above counts on it."""
    from ultralytics.nn import tasks

    safe_load = getattr(tasks, "_SafeLoad", None)
    if not (getattr(tasks, "SAFE_LOAD", False) and getattr(safe_load, "SUPPORTED", False)):
        import ultralytics

        raise ConfigError(
            f"ultralytics {ultralytics.__version__} is not loading .pt files with weights_only (needs "
            "ultralytics >= 8.4.190 with torch >= 2.6, prepared by labeling.detection.yolo_env); use .onnx weights"
        )


def _first_line(exc: BaseException, path: Path) -> str:
    """ultralytics' message, short: its first line, without its emoji and the path (the message
    names the file already)."""
    text = str(exc).replace("ERROR ❌️", "").replace(str(path), "the file").strip()
    line = text.splitlines()[0].strip() if text else ""
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _refused_by_torch(exc: BaseException) -> str | None:
    """The global torch's weights_only unpickler refused, when that is what `exc` comes from."""
    import pickle

    seen = exc
    while seen is not None:
        if isinstance(seen, pickle.UnpicklingError):
            found = re.search(r"GLOBAL (\S+)", str(seen))
            return found.group(1) if found else UNRESOLVED
        seen = seen.__cause__ or seen.__context__
    return None


def load_yolo(path: str | Path):
    """An ultralytics YOLO for a .pt file (checked by `check_checkpoint`, then loaded by
    ultralytics' restricted loader) or an .onnx file, with its class names read (so a broken
    ONNX file fails here, not at the first detection). Every failure is a FerlabError."""
    from labeling.detection.yolo_env import prepare_ultralytics_offline

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".onnx"):
        raise ConfigError(f"{path}: YOLO weights must be a .pt or .onnx file")
    if suffix == ".pt":
        check_checkpoint(path)
    prepare_ultralytics_offline()
    require_restricted_loading()
    from ultralytics import YOLO

    try:
        model = YOLO(str(path))
        _ = model.names
    except Exception as exc:  # ultralytics raises TypeError, RuntimeError, ... for a bad file
        refused = _refused_by_torch(exc)
        if refused is not None:
            raise _refusal(path, [refused]) from exc
        raise InputError(
            f"{path}: not a YOLO model ultralytics can load ({_first_line(exc, path)}); "
            "give a .pt saved by ultralytics or an exported .onnx file"
        ) from exc
    return model
