#!/usr/bin/env python3
"""Writes the seed corpus Corpus/<Target>/: small valid (and a few nearly valid) inputs for each
fuzz target. Run it again after changing a format; the files are committed. Fashion-MNIST seeds
come from /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist) when it is there."""
import gzip, json, os, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
FMNIST = "/usr/share/datasets/fashion-mnist"


def put(target, name, data):
    d = os.path.join(HERE, "Corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gz(data):  # deterministic gzip (no timestamp)
    return gzip.compress(data, compresslevel=6, mtime=0)


# ---- IDX (+ gzip): the first few records of Fashion-MNIST, re-headed and re-gzipped ----------
def idx_seeds():
    images = labels = None
    try:
        with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
            head = f.read(16)
            images = f.read(3 * 784)
        with gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")) as f:
            f.read(8)
            labels = f.read(10)
        assert struct.unpack(">IIII", head)[2:] == (28, 28)
    except OSError:
        images = bytes((i * 7) & 0xFF for i in range(3 * 784))
        labels = bytes(range(10))
    img = struct.pack(">IIII", 0x803, 3, 28, 28) + images
    lab = struct.pack(">II", 0x801, 10) + labels
    small = struct.pack(">IIII", 0x803, 2, 2, 3) + bytes(range(12))
    put("FuzzIDX", "images-3.idx3", img)
    put("FuzzIDX", "images-3.idx3.gz", gz(img))
    put("FuzzIDX", "labels-10.idx1", lab)
    put("FuzzIDX", "labels-10.idx1.gz", gz(lab))
    put("FuzzIDX", "images-2x2x3.idx3", small)
    put("FuzzIDX", "images-2x2x3.idx3.gz", gz(small))
    put("FuzzIDX", "labels-0.idx1", struct.pack(">II", 0x801, 0))
    put("FuzzIDX", "labels-twice.gz", gz(gz(lab)))
    put("FuzzIDX", "labels-two-members.gz", gz(lab[:6]) + gz(lab[6:]))


# ---- CIFAR-10: [records % 4][trailing selector] then the batch ------------------------------
def cifar_seeds():
    def record(label, seed):
        return bytes([label]) + bytes(((i * seed) >> 3) & 0xFF for i in range(3 * 32 * 32))
    put("FuzzCIFAR", "one-record", bytes([1, 0]) + record(3, 5))
    put("FuzzCIFAR", "two-records", bytes([2, 0]) + record(9, 7) + record(0, 11))
    put("FuzzCIFAR", "zero-records", bytes([0, 0]))
    put("FuzzCIFAR", "bad-label", bytes([1, 0]) + record(10, 3))
    put("FuzzCIFAR", "trailing", bytes([1, 0xF3]) + record(4, 13))


# ---- safetensors ----------------------------------------------------------------------------
def safetensors(tensors, metadata=None, checksum=False):
    """tensors: {name: (shape, [floats])}; the writer's layout (sorted names, padded header)."""
    metadata = dict(metadata or {})
    names = sorted(tensors, key=lambda n: n.encode())
    if checksum:
        crc = 0
        def feed(b):
            nonlocal crc
            crc = zlib.crc32(b, crc)
        for k in sorted(metadata, key=lambda n: n.encode()):
            feed(k.encode() + b"\0"); feed(metadata[k].encode() + b"\0")
        for n in names:
            shape, values = tensors[n]
            feed(n.encode() + b"\0"); feed(struct.pack("<q", len(shape)))
            for d in shape:
                feed(struct.pack("<q", d))
            feed(struct.pack("<%df" % len(values), *values))
        metadata["espalier.checksum"] = "crc32:%08x" % crc
    header, offset, body = {}, 0, b""
    if metadata:
        header["__metadata__"] = metadata
    for n in names:
        shape, values = tensors[n]
        data = struct.pack("<%df" % len(values), *values)
        header[n] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        body += data
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def safetensors_seeds():
    t = {"cell0/edge1/sep_conv_3x3/w": ([2, 3], [0.5, -1, 2, 3.25, 0, 1e-3]),
         "alpha/normal": ([1, 4], [0.1, 0.2, 0.3, 0.4]), "empty": ([0, 5], []), "scalar": ([], [7.0])}
    put("FuzzSafeTensors", "model.safetensors", safetensors(t))
    put("FuzzSafeTensors", "checkpoint-checksum.safetensors",
        safetensors(t, {"espalier.epoch": "3", "espalier.kind": "search-checkpoint"}, checksum=True))
    put("FuzzSafeTensors", "metadata-only.safetensors", safetensors({}, {"a": "b"}))
    put("FuzzSafeTensors", "one.safetensors", safetensors({"x": ([1], [1.0])}))


# ---- config.json of a search run ------------------------------------------------------------
def config_seeds():
    space = {"affineOps": False, "aggregator": "sum", "auxiliaryCells": [], "auxiliaryWeight": 0.4, "cells": 3,
             "channels": 4, "classes": 10, "edgeNormalization": False, "hyperConnected": False, "inputChannels": 1,
             "mergedOps": [], "multiplier": 4, "nodes": 4,
             "ops": ["espalier.op.none/1", "espalier.op.max_pool_3x3/1", "espalier.op.skip_connect/1", "espalier.op.sep_conv_3x3/1"],
             "partialChannels": 1, "scaleParameterFree": False, "stemMultiplier": 3, "sumOps": False, "reductionCells": [1, 2]}
    full = {"archBeta1": 0.5, "archBeta2": 0.999, "archLearningRate": 0.0003, "archWeightDecay": 0.001, "batchSize": 16,
            "dataset": "fashion-mnist", "epochs": 1, "evalImages": 64, "gate": "espalier.gate.softmax/1",
            "gateSettings": {"tau": "2"}, "gradClip": 5, "learningRate": 0.025, "methods": {"tau.schedule": "linear-decay"},
            "minLearningRate": 0.001, "momentum": 0.9, "opSettings": {"espalier.op.sep_conv_3x3/1": {"affine": "true"}},
            "pluginDirs": ["/tmp/plugins"], "regularizerSettings": {}, "regularizers": ["espalier.regularizer.beta-decay/1"],
            "seed": 2, "space": space, "strategy": "espalier.strategy.darts/1", "strategySettings": {"order": "second"},
            "trainImages": 128, "weightDecay": 0.0003, "memoryBudget": 1073741824, "bnRecalibrationBatches": 0,
            "channelGate": "espalier.gate.figs/1", "channelGateSettings": {}, "dataDir": "/data"}
    put("FuzzSearchConfig", "full.json", json.dumps(full, indent=2, sort_keys=True))
    put("FuzzSearchConfig", "empty-object.json", "{}")
    old = dict(full); old["space"] = {k: v for k, v in space.items() if k != "affineOps"}
    put("FuzzSearchConfig", "before-affineOps.json", json.dumps(old))
    hyper = dict(full); hyper["space"] = dict(space, hyperConnected=True, aggregator="concat", auxiliaryCells=[0])
    put("FuzzSearchConfig", "hyper.json", json.dumps(hyper))


# ---- --config selection files (YAML and JSON) -----------------------------------------------
def selection_seeds():
    put("FuzzSelection", "run.yaml", "strategy: espalier.strategy.pcdarts/1\ngate: espalier.gate.gdas/1\n"
        "ops: [espalier.op.sep_conv_3x3/1, espalier.op.skip_connect/1]\nregularizers:\n  - espalier.regularizer.beta-decay/1\n"
        "set:\n  gate.tau: 2\n  strategy.order: second\n  tau.schedule: linear-decay\n  strategy.edge_normalization: true\n")
    put("FuzzSelection", "run.json", json.dumps({"strategy": "espalier.strategy.darts/1", "ops": "espalier.op.none/1",
                                                 "set": {"gate.tau": 1.5, "x": True, "y": None}}))
    put("FuzzSelection", "aliases.yaml", "base: &b {gate.tau: 2}\nset: *b\nops: &o [a/1, b/1]\nregularizers: *o\n")
    put("FuzzSelection", "laughs.yaml", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nset: {k: *e, j: *e}\n")
    put("FuzzSelection", "duplicate.json", '{"gate": "a/1", "set": {"k": 1, "k": 2}}')
    put("FuzzSelection", "tags.yaml", "%YAML 1.1\n---\nstrategy: !!str 12\nset: {? [complex, key] : v, n: ~, d: 2001-12-14}\n...\n")


# ---- genotype.json --------------------------------------------------------------------------
def genotype_seeds():
    darts = {"normal": [["dil_conv_5x5", 1], ["dil_conv_3x3", 0], ["skip_connect", 2], ["skip_connect", 1],
                        ["sep_conv_5x5", 2], ["sep_conv_3x3", 1], ["dil_conv_3x3", 2], ["sep_conv_3x3", 1]],
             "normal_concat": [2, 3, 4, 5],
             "reduce": [["avg_pool_3x3", 1], ["sep_conv_5x5", 0], ["sep_conv_5x5", 0], ["dil_conv_5x5", 1],
                        ["skip_connect", 2], ["avg_pool_3x3", 3], ["dil_conv_5x5", 4], ["dil_conv_3x3", 0]],
             "reduce_concat": [2, 3, 4, 5],
             "op_ids": {"sep_conv_3x3": "espalier.op.sep_conv_3x3/1", "skip_connect": "espalier.op.skip_connect/1"},
             "settings": {"espalier.gate.softmax/1": {"tau": "1.0"}, "espalier.op.none/1": {}}}
    put("FuzzGenotype", "darts.json", json.dumps(darts))
    minimal = {"normal": [["a", 0], ["b", 1]], "normal_concat": [2], "reduce": [["c", 1], ["d", 0]], "reduce_concat": [2]}
    put("FuzzGenotype", "minimal.json", json.dumps(minimal))
    gs = dict(minimal, normal=[["a", 0], ["b", 1], ["c", 2]], normal_node_sizes=[1, 2], normal_concat=[2, 3],
              reduce_node_sizes=[2])
    put("FuzzGenotype", "node-sizes.json", json.dumps(gs))
    figs = dict(minimal, normal=[["sep_conv_3x3", 0]], normal_concat=[2], reduce=[["sep_conv_3x3", 0]], reduce_concat=[2],
                normal_node_sizes=[1], reduce_node_sizes=[1], node_aggregator="concat",
                per_cell=[{"reduction": False, "channels": 4, "edges": [["figs_sep_conv_3x3", 0], ["skip", 1]], "node_sizes": [2],
                           "concat": [2], "op_settings": [{"c": "2"}, {}], "out_channels": [2, 4]},
                          {"reduction": True, "channels": 8, "edges": [["x", 1]], "node_sizes": [1], "concat": [2],
                           "op_settings": [{}]}])
    put("FuzzGenotype", "figs-per-cell.json", json.dumps(figs))


# ---- plugin descriptions: bytes for the shim in Sources/FuzzPluginDesc/main.swift -----------
TOKENS = [
    "espalier.op.fuzz/1", "espalier.gate.fuzz/1", "espalier.regularizer.fuzz/1", "espalier.strategy.fuzz/1", "org.example.op.a-b_c/2",
    "espalier.fuzz", "1.0.0", "a summary", "tau", "lr", "mode", "steps.max",
    "true", "false", "0", "1", "-3", "2.5", "1e308", "nan", "a|b|c", "a", "",
    "double(int64,int64)", "void()", "int32(pointer,string)", "float(float,double,uint32,uint64)", "void(void)",
    "tau.schedule", "linear-decay",
]


def tok(s):
    return bytes([TOKENS.index(s) + 1])


def u32(v):
    return struct.pack("<I", v)


SIZE = b"\x00"  # size selector < 200: the true struct_size


def param(ptype, name, default, choices=None, lo=None, hi=None):
    out = SIZE + bytes([ptype]) + tok(name) + tok(default) + tok("a summary") + (tok(choices) if choices else b"\x00")
    if lo is None:
        lo, hi = 1, -1  # min > max: unbounded
    for v in (lo, hi):
        out += bytes([1, v & 0xFF])  # Double(Int8(v))
    return out


def method(slot, name, sig):
    return SIZE + tok(slot) + tok(name) + tok(sig) + tok("a summary") + b"\x01"


def component(kind, cid, params=(), methods=(), vt_mask=0xFFFFFFFF, extra=b""):
    out = SIZE + bytes([kind]) + tok(cid) + tok("a summary")
    out += bytes([len(params)]) + b"".join(params)   # selector < 128: an owned array of that many
    out += bytes([len(methods)]) + b"".join(methods)
    out += b"\x01" + u32(vt_mask) + extra + SIZE                              # vtable: mask, flag words, struct_size
    return out


def plugin(components, tail=b""):
    out = SIZE + b"\x00" + b"\x03" + tok("espalier.fuzz") + tok("1.0.0") + tok("a summary")
    out += bytes([len(components)]) + b"".join(components)
    return out + b"\x00" + tail  # minimum minor 0, then texts for ParamSpec.parse


def plugin_seeds():
    op = component(1, "espalier.op.fuzz/1", [param(3, "tau", "2.5", lo=0, hi=10), param(5, "mode", "a", "a|b|c"),
                                             param(1, "lr", "true"), param(2, "steps.max", "-3", lo=-5, hi=5), param(4, "a", "")],
                   [method("tau.schedule", "linear-decay", "double(int64,int64)")], vt_mask=0b111)   # composed: create, destroy, build
    put("FuzzPluginDesc", "op", plugin([op], tok("1") + tok("nan") + tok("a")))
    raw = component(1, "org.example.op.a-b_c/2", [], [method("tau.schedule", "linear-decay", "float(float,double,uint32,uint64)")],
                    vt_mask=0b111011)  # raw: create, destroy, output_shape, forward, backward
    put("FuzzPluginDesc", "raw-op", plugin([raw]))
    gate = component(2, "espalier.gate.fuzz/1", [param(3, "tau", "1")], [method("tau.schedule", "linear-decay", "void()")],
                     extra=u32(1) + u32(0b0110))
    put("FuzzPluginDesc", "gate", plugin([gate]))
    reg = component(3, "espalier.regularizer.fuzz/1", [], [], vt_mask=0xFFFFFFFF)
    strat = component(4, "espalier.strategy.fuzz/1", [param(5, "mode", "a", "a|b|c")], [], extra=u32(1))
    put("FuzzPluginDesc", "regularizer-strategy", plugin([reg, strat]))
    put("FuzzPluginDesc", "four-kinds", plugin([op, gate, reg, strat]))
    put("FuzzPluginDesc", "empty", plugin([]))

# ---- NumPy .npz: the four arrays, stored and deflated, uint8 NHWC / float32 NCHW / gray ----------
def npy(descr, shape, data, fortran=False):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (descr, "True" if fortran else "False", dims)
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data


def npz(members, deflate):
    import io, zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            z.writestr(info, data)
    return buf.getvalue()


def npz_seeds():
    x = npy("|u1", (3, 2, 2, 3), bytes(range(36)))
    y = npy("<i8", (3,), struct.pack("<3q", 0, 1, 2))
    put("FuzzNPZ", "uint8-nhwc-stored", npz([("x_train", x), ("y_train", y), ("x_test", x), ("y_test", y)], False))
    put("FuzzNPZ", "uint8-nhwc-deflated", npz([("x_train", x), ("y_train", y), ("x_test", x), ("y_test", y)], True))
    xf = npy("<f4", (2, 1, 2, 2), struct.pack("<8f", *[0.5, 1, 0, 0.25] * 2))
    yb = npy(">i4", (2, 1), struct.pack(">2i", 1, 0))
    xg = npy("|u1", (2, 2, 2), bytes(range(8)))
    yu = npy("|u1", (2,), bytes([0, 1]))
    put("FuzzNPZ", "float-nchw-gray", npz([("x_train", xf), ("y_train", yb), ("x_test", xg), ("y_test", yu)], True))
    put("FuzzNPZ", "missing-member", npz([("x_train", x), ("y_train", y)], False))


if __name__ == "__main__":
    idx_seeds(); cifar_seeds(); npz_seeds(); safetensors_seeds(); config_seeds(); selection_seeds(); genotype_seeds(); plugin_seeds()
