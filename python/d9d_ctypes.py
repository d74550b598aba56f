"""d9d from Python with neither torch nor a compiled extension: ctypes over libd9d's C ABI
(<d9d/d9d.h>), each tensor handed to numpy through DLPack without a copy.

    import d9d_ctypes
    state = d9d_ctypes.load("ckpt/")                      # {name: array}, as safetensors' load_file
    for name, array in d9d_ctypes.stream("ckpt/", spec=open("spec.json").read(),
                                         options={"memory_budget": "512MiB"}):
        ...

libd9d is `library_path` (an argument of every function), else $D9D_LIBRARY, else the system's
(ctypes.util.find_library("d9d"), which finds an installed libd9d).
Arrays that view the mapped checkpoint (the tensors a spec passes through) are read-only; every
array keeps what it views alive on its own, after the stream is closed. BF16 and FP8 tensors come
as ml_dtypes arrays (numpy has no such dtypes; ml_dtypes must be installed); F4/F6 raise TypeError.
"""
import ctypes
import ctypes.util
import json
import os

import numpy as np


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
                ("deleter", Deleter), ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


class DLManagedTensor(ctypes.Structure):  # DLPack's legacy ABI, for consumers asking for < 1.0
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", Deleter)]


class Error(RuntimeError):
    """A d9d failure: `code` is the D9D_E_* status, the message d9d_last_error()'s."""

    def __init__(self, code, message):
        super().__init__(f"{message} (code {code})")
        self.code = code


_libraries = {}


def library(path=None):
    path = path or os.environ.get("D9D_LIBRARY") or ctypes.util.find_library("d9d")
    if not path:
        raise OSError("libd9d not found: pass library=PATH or set D9D_LIBRARY")
    if path not in _libraries:
        lib = ctypes.CDLL(path)
        lib.d9d_last_error.restype = ctypes.c_char_p
        lib.d9d_stream_open.argtypes = [ctypes.c_char_p] * 3 + [ctypes.POINTER(ctypes.c_void_p)]
        lib.d9d_stream_next.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p),
                                        ctypes.POINTER(ctypes.POINTER(DLManagedTensorVersioned))]
        lib.d9d_stream_close.argtypes = [ctypes.c_void_p]
        lib.d9d_stream_close.restype = None
        lib.d9d_to_legacy_dlpack.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(DLManagedTensor))]
        _libraries[path] = lib
    return _libraries[path]


def _check(lib, status):
    if status < 0:
        raise Error(status, lib.d9d_last_error().decode())
    return status


# Capsules (DLPack's Python protocol) are made without a destructor: np.from_dlpack takes the tensor
# by renaming its capsule ("used_dltensor..."), and a capsule it did not take is released by
# _Exported.release_unconsumed(), in Python, never from a destructor (no callback into Python runs
# while numpy unwinds an error).
_py = ctypes.pythonapi
_py.PyCapsule_New.restype = ctypes.py_object
_py.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_py.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_VERSIONED, _LEGACY = b"dltensor_versioned", b"dltensor"


class _Exported:
    """One DLManagedTensorVersioned from d9d, offered to np.from_dlpack (which takes it once)."""

    def __init__(self, lib, managed):
        self._lib, self._managed, self._capsule = lib, managed, None

    def __dlpack_device__(self):
        return self._managed.dl_tensor.device.device_type, self._managed.dl_tensor.device.device_id

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        if self._capsule is not None:
            raise BufferError("a d9d tensor can be exported once")
        if copy or (dl_device is not None and tuple(dl_device) != self.__dlpack_device__()):
            raise BufferError("d9d exports its tensors where they are, without a copy")
        if max_version is not None and max_version[0] >= 1:
            self._owner, self._name = self._managed, _VERSIONED
        else:
            legacy = ctypes.POINTER(DLManagedTensor)()
            _check(self._lib, self._lib.d9d_to_legacy_dlpack(ctypes.addressof(self._managed),
                                                              ctypes.byref(legacy)))
            self._owner, self._name = legacy.contents, _LEGACY
        self._capsule = _py.PyCapsule_New(ctypes.addressof(self._owner), self._name, None)
        return self._capsule

    def release_unconsumed(self):
        owner = self._managed if self._capsule is None else self._owner
        if self._capsule is None or _py.PyCapsule_IsValid(self._capsule, self._name):
            owner.deleter(ctypes.addressof(owner))


# DLPack (code, bits) numpy lacks -> the ml_dtypes type; they travel as unsigned ints of that size.
_ML_DTYPES = {(4, 16): "bfloat16", (10, 8): "float8_e4m3fn", (11, 8): "float8_e4m3fnuz",
              (12, 8): "float8_e5m2", (13, 8): "float8_e5m2fnuz", (14, 8): "float8_e8m0fnu"}


def to_numpy(lib, managed, name=""):
    """A numpy array viewing a DLManagedTensorVersioned that d9d handed out (taking it over)."""
    exported = _Exported(lib, managed)
    try:
        dtype = managed.dl_tensor.dtype
        if dtype.bits % 8 != 0:
            raise TypeError(f"{name}: numpy cannot hold the {dtype.bits}-bit packed dtype (DLPack code {dtype.code})")
        view_as = _ML_DTYPES.get((dtype.code, dtype.bits))
        if view_as is not None:
            import ml_dtypes
            view_as = getattr(ml_dtypes, view_as)
            dtype.code = 1  # kDLUInt: the same bits as numpy's unsigned int of that size
        array = np.from_dlpack(exported)
        return array.view(view_as) if view_as is not None else array
    finally:
        exported.release_unconsumed()


def _text(value):
    return None if value is None else (value if isinstance(value, str) else json.dumps(value)).encode()


def stream(path, spec=None, options=None, library_path=None):
    """Yields (name, array) for every output of `spec` (JSON text or a dict; None: every tensor as
    it is) on the checkpoint `path`, in d9d's read order; `options` as <d9d/d9d.h>'s options_json."""
    lib = library(library_path)
    handle = ctypes.c_void_p()
    _check(lib, lib.d9d_stream_open(os.fsencode(path), _text(spec), _text(options), ctypes.byref(handle)))
    try:
        name, out = ctypes.c_char_p(), ctypes.POINTER(DLManagedTensorVersioned)()
        while _check(lib, lib.d9d_stream_next(handle, ctypes.byref(name), ctypes.byref(out))) == 1:
            key = name.value.decode()
            yield key, to_numpy(lib, out.contents, key)
    finally:
        lib.d9d_stream_close(handle)


def load(path, spec=None, options=None, library_path=None):
    """Every output as {name: array}: safetensors.numpy.load_file's answer, without copies."""
    return dict(stream(path, spec, options, library_path))
