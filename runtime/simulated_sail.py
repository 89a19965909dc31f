"""SIMULATED TPU: a stand-in for `sophon.sail` on tpu-mlir's chip simulator (cmodel), not hardware.

Compiled bmodels run through BMRuntime and BMLib from tpu-mlir's PyPI wheel (called with
ctypes, so from any Python), on the cmodel chip simulator that wheel ships. The numerics are
the chip's; the speed is not: the simulator is roughly 1000x slower than the chip and its
timings mean nothing. Offers the part of the sail API that runtime/sail_backend.py uses
(Handle, Engine, Tensor, Dtype, IOMode), with sail's semantics, so that backend runs unchanged.

One simulated device per process, for one chip, named by the first bmodel loaded. The
simulator is picked the way tpu-mlir's own model_runner picks it: lib/libcmodel.so and
lib/libbmlib.so.0 of the tpu-mlir install are pointed at that chip's variants under the lock
file model_runner uses, so the install must be writable (unless already set for that chip).

The simulator's C libraries print progress to standard output at start-up and at every launch
("[0] do_allreduce: 0."). Their output goes to a log file in the temporary folder instead, so the
terminal chat shows only the chat.

The simulated device has 4 GiB of memory unless CMODEL_GLOBAL_MEM_SIZE says otherwise (in hex,
e.g. 0x200000000 for 8 GiB); running out aborts the process inside BMLib, it cannot be caught.
"""
from __future__ import annotations

import atexit
import ctypes
import enum
import fcntl
import filecmp
import functools
import logging
import os
import struct
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from runtime.backend import to_bfloat16_bits
from runtime.tpu_mlir import find_toolchain, library_dir

log = logging.getLogger("visualglm.tpu")

SIMULATED = True  # not in the real sophon.sail: lets its users say plainly that no chip is in use

CMODEL_LOCK = "/tmp/cmodel_so.lock"  # tpu-mlir's model_runner switches the same links under it
CMODEL_LIBRARY = {  # chips BMRuntime drives, and their simulators (as tpu-mlir's model_runner maps them)
    "BM1684X": "libcmodel_bm1684x.so", "BM1688": "libcmodel_bm1688.so", "CV186X": "libcmodel_bm1688.so",
    "BM1684": "libcmodel_bm1684.so", "BM1684X2": "libcmodel_bm1684x2.so", "CV184X": "libcmodel_cv184x.so",
    "SGTPUV8": "libcmodel_sgtpuv8.so", "SG2380": "libcmodel_sg2380.so"}


class SimulatorError(RuntimeError):
    """The simulated device refused a call, or a call to BMRuntime / BMLib failed."""


class Dtype(enum.IntEnum):
    """bm_data_type_t."""
    BM_FLOAT32 = 0
    BM_FLOAT16 = 1
    BM_INT8 = 2
    BM_UINT8 = 3
    BM_INT16 = 4
    BM_UINT16 = 5
    BM_INT32 = 6
    BM_UINT32 = 7
    BM_BFLOAT16 = 8


class IOMode(enum.IntEnum):
    SYSI = 0
    SYSO = 1
    SYSIO = 2
    DEVIO = 3


HOST_DTYPE = {Dtype.BM_FLOAT32: np.dtype(np.float32), Dtype.BM_FLOAT16: np.dtype(np.float16),
              Dtype.BM_INT8: np.dtype(np.int8), Dtype.BM_UINT8: np.dtype(np.uint8),
              Dtype.BM_INT16: np.dtype(np.int16), Dtype.BM_UINT16: np.dtype(np.uint16),
              Dtype.BM_INT32: np.dtype(np.int32), Dtype.BM_UINT32: np.dtype(np.uint32),
              Dtype.BM_BFLOAT16: np.dtype(np.uint16)}  # bf16 travels as its bit patterns
"""What asnumpy() returns per device type; update_data() takes it too, and uint16 bits for fp16."""

# ---- C structures (bmlib_runtime.h, bmdef.h; x86-64 Linux) --------------------------------------

BM_MAX_DIMS_NUM = 8


class DeviceMem(ctypes.Structure):
    """bm_device_mem_t: the device/system union (8-byte address, u32, i32), flags, u32 size."""
    _fields_ = [("device_addr", ctypes.c_ulong), ("reserved", ctypes.c_uint), ("dmabuf_fd", ctypes.c_int),
                ("flags", ctypes.c_uint), ("size", ctypes.c_uint)]


class Shape(ctypes.Structure):
    """bm_shape_t."""
    _fields_ = [("num_dims", ctypes.c_int), ("dims", ctypes.c_int * BM_MAX_DIMS_NUM)]


class BmTensor(ctypes.Structure):
    """bm_tensor_t."""
    _fields_ = [("dtype", ctypes.c_int), ("shape", Shape), ("device_mem", DeviceMem), ("st_mode", ctypes.c_int)]


class StageInfo(ctypes.Structure):
    """bm_stage_info_t, as far as read here: newer runtimes append fields, so only stage 0 is read."""
    _fields_ = [("input_shapes", ctypes.POINTER(Shape)), ("output_shapes", ctypes.POINTER(Shape))]


class NetInfo(ctypes.Structure):
    """bm_net_info_t, up to the fields read here."""
    _fields_ = [("name", ctypes.c_char_p), ("is_dynamic", ctypes.c_bool), ("input_num", ctypes.c_int),
                ("input_names", ctypes.POINTER(ctypes.c_char_p)), ("input_dtypes", ctypes.POINTER(ctypes.c_int)),
                ("input_scales", ctypes.POINTER(ctypes.c_float)), ("output_num", ctypes.c_int),
                ("output_names", ctypes.POINTER(ctypes.c_char_p)), ("output_dtypes", ctypes.POINTER(ctypes.c_int)),
                ("output_scales", ctypes.POINTER(ctypes.c_float)), ("stage_num", ctypes.c_int),
                ("stages", ctypes.POINTER(StageInfo)), ("max_input_bytes", ctypes.POINTER(ctypes.c_size_t)),
                ("max_output_bytes", ctypes.POINTER(ctypes.c_size_t))]


_P = ctypes.c_void_p
_SIGNATURES = {  # name: (restype, argtypes)
    "bm_dev_request": (ctypes.c_int, [ctypes.POINTER(_P), ctypes.c_int]),
    "bm_dev_free": (None, [_P]),
    "bm_malloc_device_byte": (ctypes.c_int, [_P, ctypes.POINTER(DeviceMem), ctypes.c_uint]),
    "bm_free_device": (None, [_P, DeviceMem]),
    "bm_memcpy_s2d": (ctypes.c_int, [_P, DeviceMem, _P]),
    "bm_memcpy_d2s": (ctypes.c_int, [_P, _P, DeviceMem]),
    "bm_memcpy_d2d_byte": (ctypes.c_int, [_P, DeviceMem, ctypes.c_size_t, DeviceMem, ctypes.c_size_t,
                                          ctypes.c_size_t]),
    "bm_thread_sync": (ctypes.c_int, [_P]),
    "bmrt_create": (_P, [_P]),
    "bmrt_destroy": (None, [_P]),
    "bmrt_load_bmodel": (ctypes.c_bool, [_P, ctypes.c_char_p]),
    "bmrt_get_network_number": (ctypes.c_int, [_P]),
    "bmrt_get_network_name": (ctypes.c_char_p, [_P, ctypes.c_int]),
    "bmrt_get_network_info": (ctypes.POINTER(NetInfo), [_P, ctypes.c_char_p]),
    "bmrt_launch_tensor_ex": (ctypes.c_bool, [_P, ctypes.c_char_p, ctypes.POINTER(BmTensor), ctypes.c_int,
                                              ctypes.POINTER(BmTensor), ctypes.c_int, ctypes.c_bool, ctypes.c_bool]),
}


# ---- which chip a bmodel is for -------------------------------------------------------------------

BMODEL_MAGIC = 0xFF55AAEE
MODEL_CHIP_FIELD = 3  # `chip:string (id: 3)` of table Model in tpu-mlir's bmodel.fbs


def bmodel_chip(path: Path) -> str:
    """The chip a bmodel was compiled for ("BM1684X", ...), read from its header and flatbuffer.

    The file starts with MODEL_HEADER_T (magic, header size, flatbuffer size, ...), then the
    flatbuffer whose root table (Model) holds the chip name as a string field."""
    with open(path, "rb") as f:
        head = f.read(12)
        try:
            magic, header_size, fb_size = struct.unpack("<III", head)
        except struct.error:
            raise SimulatorError(f"{path} is not a bmodel (too short)") from None
        if magic != BMODEL_MAGIC:
            raise SimulatorError(f"{path} is not a bmodel (magic {magic:#x})")
        f.seek(header_size)
        fb = f.read(fb_size)
    try:
        table = struct.unpack_from("<I", fb, 0)[0]
        vtable = table - struct.unpack_from("<i", fb, table)[0]
        vtable_size = struct.unpack_from("<H", fb, vtable)[0]
        slot = 4 + 2 * MODEL_CHIP_FIELD
        field = struct.unpack_from("<H", fb, vtable + slot)[0] if slot + 2 <= vtable_size else 0
        if field == 0:
            raise SimulatorError(f"{path}: the bmodel names no chip")
        at = table + field
        start = at + struct.unpack_from("<I", fb, at)[0]
        length = struct.unpack_from("<I", fb, start)[0]
        name = fb[start + 4:start + 4 + length]
        if len(name) != length:
            raise struct.error("string runs past the flatbuffer")
        return name.decode("ascii")
    except (struct.error, UnicodeDecodeError) as exc:
        raise SimulatorError(f"{path}: unreadable bmodel header ({exc})") from None


# ---- the simulated device ----------------------------------------------------------------------

def _point_link(link: Path, target: Path) -> None:
    """Make `link` resolve to `target` (a copy of it is as good), swapping it atomically."""
    if link.exists() and (link.resolve() == target.resolve() or filecmp.cmp(link, target, shallow=False)):
        return
    temp = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        temp.unlink(missing_ok=True)
        temp.symlink_to(target)
        os.replace(temp, link)
    except OSError as exc:
        raise SimulatorError(f"cannot point {link} at {target.name} to select the chip simulator: {exc} "
                             f"(the tpu-mlir install must be writable)") from exc


def _select_chip(lib: Path, chip: str) -> None:
    """Point libcmodel.so (and libbmlib.so.0) at `chip`'s variants, as tpu-mlir's model_runner does."""
    _point_link(lib / "libcmodel.so", lib / CMODEL_LIBRARY[chip])
    bmlib = lib / ("libbmlib_bm1684x2.so.0" if chip == "BM1684X2" else "libbmlib_bm1684x.so.0")
    if bmlib.exists():  # older installs ship a single libbmlib.so.0
        _point_link(lib / "libbmlib.so.0", bmlib)


class _NativeOutput:
    """A log file that the C libraries' standard output goes to. libc's `stdout` stream is
    swapped for one on the log, so C's printf lands there while file descriptor 1, which
    Python writes to, keeps the terminal."""

    def __init__(self):
        self.path = Path(tempfile.gettempdir()) / f"visualglm-simulator-{os.getpid()}.log"
        libc = ctypes.CDLL(None)
        libc.fdopen.restype, libc.fdopen.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_char_p]
        log = libc.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), b"a")
        if log:
            ctypes.c_void_p.in_dll(libc, "stdout").value = log


class _Device:
    """The process's simulated device: the loaded libraries, the bm_handle and what lives on it."""

    def __init__(self, lib: Path, chip: str, dev_id: int):
        self.chip, self.dev_id = chip, dev_id
        # BMLib dlopens "libcmodel.so" from its own folder in bm_dev_request, and BMRuntime links
        # libbmlib.so.0: both must be loaded while the links point at this chip, under the lock.
        self.output = _NativeOutput()
        fd = os.open(CMODEL_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _select_chip(lib, chip)
            bmlib = ctypes.CDLL(str(lib / "libbmlib.so.0"), mode=ctypes.RTLD_GLOBAL)
            bmrt = ctypes.CDLL(str(lib / "libbmrt.so"))
            self.c: dict[str, Any] = {}
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(bmlib if name.startswith("bm_") else bmrt, name)
                fn.restype, fn.argtypes = restype, argtypes
                self.c[name] = fn
            handle = _P()
            self.check("bm_dev_request", ctypes.byref(handle), dev_id)
        finally:
            os.close(fd)  # releases the lock
        self.handle = handle
        self._live: dict[int, Callable[[], None]] = {}
        self._next = 0
        atexit.register(self.close)

    def call(self, name: str, *args) -> Any:
        return self.c[name](*args)

    def check(self, name: str, *args) -> None:
        status = self.c[name](*args)
        if status != 0:
            raise SimulatorError(f"{name} failed on the simulated {self.chip} (bm_status_t {status})")

    def own(self, owner: object, release: Callable[[], None]) -> None:
        """Run `release` when `owner` is collected, or at exit while the device is still open."""
        key, self._next = self._next, self._next + 1
        self._live[key] = release
        weakref.finalize(owner, self._release, key).atexit = False

    def _release(self, key: int) -> None:
        release = self._live.pop(key, None)
        if release is not None:
            release()

    def malloc(self, owner: object, nbytes: int) -> DeviceMem:
        if not 0 < nbytes < 2**32:
            raise SimulatorError(f"cannot allocate {nbytes} bytes: BMLib buffers hold 1 byte to 4 GiB")
        mem = DeviceMem()
        self.check("bm_malloc_device_byte", self.handle, ctypes.byref(mem), nbytes)
        self.own(owner, functools.partial(self.c["bm_free_device"], self.handle, mem))
        return mem

    def close(self) -> None:
        """Free every buffer and runtime, newest first, then the device (BMLib asserts otherwise)."""
        for key in sorted(self._live, reverse=True):
            self._release(key)
        if self.handle:
            self.c["bm_dev_free"](self.handle)
            self.handle = None


_device: _Device | None = None
_device_lock = threading.Lock()


def _open_device(chip: str, dev_id: int) -> _Device:
    global _device
    with _device_lock:
        if _device is None:
            if chip not in CMODEL_LIBRARY:
                raise SimulatorError(f"the simulator runs bmodels for {', '.join(CMODEL_LIBRARY)}; this one is "
                                     f"for {chip}")
            _device = _Device(library_dir(find_toolchain()), chip, dev_id)
            log.warning("SIMULATED TPU: tpu-mlir chip simulator (cmodel) for %s, not hardware; ~1000x slower "
                        "than the chip; timings mean nothing (the simulator's own output: %s)", chip, _device.output.path)
        elif _device.chip != chip:
            raise SimulatorError(f"this process already simulates a {_device.chip}; a bmodel for {chip} needs "
                                 f"a process of its own (one chip simulator per process)")
        if dev_id != _device.dev_id:
            raise SimulatorError(f"this process simulates one device, dev_id {_device.dev_id}; got dev_id {dev_id}")
        return _device


def _current_device(dev_id: int) -> _Device:
    if _device is None:
        raise SimulatorError("no simulated device yet: the first Engine's bmodel picks the chip to simulate, "
                             "so create the Engine before any Tensor")
    return _open_device(_device.chip, dev_id)


# ---- the sail API ------------------------------------------------------------------------------

class Handle:
    """A device id. The simulated device itself opens with the first Engine (its bmodel names the chip)."""

    def __init__(self, dev_id: int):
        library_dir(find_toolchain())  # fail here, with the setup hint, when there is no simulator at all
        self._dev_id = int(dev_id)

    def get_device_id(self) -> int:
        return self._dev_id


class Tensor:
    """A tensor in simulated device memory. Only device-only tensors (own_sys_data=False,
    own_dev_data=True) exist here: update_data() and asnumpy() go straight to and from the device."""

    def __init__(self, handle: Handle, shape: Sequence[int], dtype: Dtype, own_sys_data: bool, own_dev_data: bool):
        if own_sys_data or not own_dev_data:
            raise NotImplementedError("the simulated sail offers device-only tensors "
                                      "(own_sys_data=False, own_dev_data=True)")
        self._device = _current_device(handle.get_device_id())
        self._dtype = Dtype(dtype)
        self._shape = [int(d) for d in shape]
        self._mem = self._device.malloc(self, self._nbytes)

    @property
    def _count(self) -> int:
        return int(np.prod(self._shape, dtype=np.int64))

    @property
    def _nbytes(self) -> int:
        return self._count * HOST_DTYPE[self._dtype].itemsize

    def shape(self) -> list[int]:
        return list(self._shape)

    def dtype(self) -> Dtype:
        return self._dtype

    def reshape(self, shape: Sequence[int]) -> None:
        shape = [int(d) for d in shape]
        if np.prod(shape, dtype=np.int64) != self._count:
            raise ValueError(f"cannot reshape a {self._shape} tensor to {shape}: the element count differs")
        self._shape = shape

    def memory_set(self, value: float) -> None:
        """Fill every element with `value`, converted to the tensor's type."""
        if self._dtype == Dtype.BM_BFLOAT16:
            host = np.full(self._count, to_bfloat16_bits(np.float32(value)), dtype=np.uint16)
        else:
            host = np.full(self._count, value, dtype=HOST_DTYPE[self._dtype])
        self._device.check("bm_memcpy_s2d", self._device.handle, self._mem, host.ctypes.data)

    def update_data(self, data: np.ndarray) -> None:
        """Host -> device, the whole tensor: fp16 as float16 or its uint16 bits, bf16 as uint16 bits."""
        data = np.ascontiguousarray(data)
        allowed = {HOST_DTYPE[self._dtype]} | ({np.dtype(np.uint16)} if self._dtype == Dtype.BM_FLOAT16 else set())
        if data.dtype not in allowed:
            raise TypeError(f"update_data: a {self._dtype.name} tensor takes {' or '.join(map(str, allowed))} "
                            f"data, not {data.dtype}")
        if data.nbytes != self._nbytes:
            raise ValueError(f"update_data: {data.nbytes} bytes (shape {list(data.shape)}) for a tensor of "
                             f"{self._nbytes} bytes (shape {self._shape}, {self._dtype.name})")
        self._device.check("bm_memcpy_s2d", self._device.handle, self._mem, data.ctypes.data)

    def asnumpy(self) -> np.ndarray:
        """Device -> host, in the tensor's shape (fp16 as float16, bf16 as its uint16 bits)."""
        host = np.empty(self._shape, dtype=HOST_DTYPE[self._dtype])
        self._device.check("bm_memcpy_d2s", self._device.handle, host.ctypes.data, self._mem)
        return host

    def sync_d2d(self, src: Tensor, offset_src: int, offset_dst: int, length: int) -> None:
        """Copy `length` elements of `src` from element `offset_src` into this tensor at `offset_dst`."""
        if src._dtype != self._dtype:
            raise TypeError(f"sync_d2d from a {src._dtype.name} tensor into a {self._dtype.name} tensor")
        size = HOST_DTYPE[self._dtype].itemsize
        for name, tensor, offset in (("source", src, offset_src), ("destination", self, offset_dst)):
            if offset < 0 or length < 0 or offset + length > tensor._count:
                raise ValueError(f"sync_d2d: elements [{offset}, {offset + length}) are outside the {name} "
                                 f"tensor ({tensor._count} elements)")
        if length:
            self._device.check("bm_memcpy_d2d_byte", self._device.handle, self._mem, offset_dst * size, src._mem,
                               offset_src * size, length * size)


class _Net:
    """One net's inputs and outputs, read from bm_net_info_t (stage 0)."""

    def __init__(self, info: NetInfo):
        stage = info.stages[0]
        self.static = not info.is_dynamic and info.stage_num == 1
        self.inputs = self._tensors(info.input_num, info.input_names, info.input_dtypes, stage.input_shapes)
        self.outputs = self._tensors(info.output_num, info.output_names, info.output_dtypes, stage.output_shapes)

    @staticmethod
    def _tensors(count: int, names, dtypes, shapes) -> dict[str, tuple[list[int], int]]:
        return {names[i].decode(): (list(shapes[i].dims[:shapes[i].num_dims]), dtypes[i]) for i in range(count)}


class Engine:
    """A bmodel loaded on the simulated device. process() runs a net on device tensors the caller owns."""

    def __init__(self, bmodel_path: str, dev_id: int, mode: IOMode):
        path = Path(bmodel_path)
        if not path.is_file():
            raise FileNotFoundError(f"no bmodel at {path}")
        IOMode(mode)  # it only shapes the tensors sail's Engine allocates itself, which this one does not
        self._device = _open_device(bmodel_chip(path), int(dev_id))
        self._bmrt = self._device.call("bmrt_create", self._device.handle)
        if not self._bmrt:
            raise SimulatorError("bmrt_create failed on the simulated device")
        self._device.own(self, functools.partial(self._device.c["bmrt_destroy"], self._bmrt))
        if not self._device.call("bmrt_load_bmodel", self._bmrt, str(path).encode()):
            raise SimulatorError(f"BMRuntime could not load {path} on the simulated {self._device.chip}")
        self._nets: dict[str, _Net] = {}
        for i in range(self._device.call("bmrt_get_network_number", self._bmrt)):
            name = self._device.call("bmrt_get_network_name", self._bmrt, i)
            self._nets[name.decode()] = _Net(self._device.call("bmrt_get_network_info", self._bmrt, name).contents)

    def _net(self, graph: str) -> _Net:
        if graph not in self._nets:
            raise KeyError(f"no graph {graph!r} in the bmodel; it has {', '.join(self._nets)}")
        return self._nets[graph]

    @staticmethod
    def _entry(table: dict[str, tuple[list[int], int]], graph: str, name: str, kind: str) -> tuple[list[int], int]:
        if name not in table:
            raise KeyError(f"graph {graph!r} has no {kind} {name!r}; its {kind}s: {', '.join(table)}")
        return table[name]

    def get_graph_names(self) -> list[str]:
        return list(self._nets)

    def get_input_names(self, graph: str) -> list[str]:
        return list(self._net(graph).inputs)

    def get_output_names(self, graph: str) -> list[str]:
        return list(self._net(graph).outputs)

    def get_input_shape(self, graph: str, name: str) -> list[int]:
        return list(self._entry(self._net(graph).inputs, graph, name, "input")[0])

    def get_output_shape(self, graph: str, name: str) -> list[int]:
        return list(self._entry(self._net(graph).outputs, graph, name, "output")[0])

    def get_input_dtype(self, graph: str, name: str) -> Dtype:
        return Dtype(self._entry(self._net(graph).inputs, graph, name, "input")[1])

    def get_output_dtype(self, graph: str, name: str) -> Dtype:
        return Dtype(self._entry(self._net(graph).outputs, graph, name, "output")[1])

    def process(self, graph: str, input_tensors: Mapping[str, Tensor], output_tensors: Mapping[str, Tensor]) -> None:
        """Run `graph`, reading the input tensors and writing the outputs into the given tensors' memory."""
        net = self._net(graph)
        if not net.static:
            raise SimulatorError(f"graph {graph!r} is dynamic or has several stages; the simulated sail runs "
                                 f"static single-stage nets")
        inputs = self._bind(graph, "input", net.inputs, input_tensors)
        outputs = self._bind(graph, "output", net.outputs, output_tensors)
        if not self._device.call("bmrt_launch_tensor_ex", self._bmrt, graph.encode(), inputs, len(inputs), outputs,
                                 len(outputs), True, False):
            raise SimulatorError(f"bmrt_launch_tensor_ex failed for graph {graph!r}")
        self._device.check("bm_thread_sync", self._device.handle)

    def _bind(self, graph: str, kind: str, spec: dict[str, tuple[list[int], int]],
              tensors: Mapping[str, Tensor]) -> ctypes.Array:
        """bm_tensor_t[] in the net's order, after checking names, types and sizes."""
        missing, unknown = [n for n in spec if n not in tensors], [n for n in tensors if n not in spec]
        if missing or unknown:
            raise KeyError(f"graph {graph!r} {kind}s: missing {missing}, unknown {unknown}; expected {list(spec)}")
        array = (BmTensor * len(spec))()
        for slot, (name, (shape, dtype)) in zip(array, spec.items()):
            tensor = tensors[name]
            if tensor.dtype() != dtype or np.prod(tensor.shape(), dtype=np.int64) != np.prod(shape, dtype=np.int64):
                raise ValueError(f"graph {graph!r} {kind} {name!r} is {Dtype(dtype).name} {shape}; got a "
                                 f"{tensor.dtype().name} {tensor.shape()} tensor")
            slot.dtype = dtype
            slot.shape.num_dims = len(shape)
            slot.shape.dims[:len(shape)] = shape
            slot.device_mem = tensor._mem
        return array


__all__ = ["Dtype", "IOMode", "Handle", "Engine", "Tensor", "SimulatorError", "bmodel_chip"]
